"""wanda-export: prune causal LMs with Wanda and ship verified sparse artifacts."""

__version__ = "0.1.0"
