#!/usr/bin/env bash
# Create the separate virtual environment that holds the peer, llm-compressor, for
# benchmarks/compare_llmcompressor.py. llm-compressor 0.14 pins transformers 5.15-5.17 and
# torch 2.10-2.14, which clash with our own venv, so it lives on its own.
#
#   bash benchmarks/setup_peer_venv.sh            # creates /work/peer-venv
#   bash benchmarks/setup_peer_venv.sh DIR        # or DIR
#
# Idempotent: an existing venv that already holds the pinned versions is left as it is.
# torch is installed FIRST and pinned to the CPU build (the wheel that lies on this machine's
# disk, found through pip's configured find-links), then held by a constraints file while pip
# resolves llm-compressor, so pip never replaces it with a CUDA build.
set -euo pipefail

VENV="${1:-/work/peer-venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
LLMCOMPRESSOR_VERSION="0.14.0.1"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

installed() {  # installed <dist> -> prints version or nothing
    "$PY" - "$1" <<'EOF' 2>/dev/null || true
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
EOF
}

torch_have="$(installed torch)"
if [[ "${torch_have%%+*}" != "$TORCH_VERSION" ]]; then
    echo "installing torch==$TORCH_VERSION (CPU wheel)"
    "$PY" -m pip install --disable-pip-version-check "torch==$TORCH_VERSION"
    torch_have="$(installed torch)"
fi
cuda="$("$PY" -c 'import torch; print(torch.version.cuda or "")')"
if [[ -n "$cuda" ]]; then
    echo "error: $VENV holds a CUDA build of torch ($torch_have, CUDA $cuda); remove the venv and rerun" >&2
    exit 1
fi
echo "torch $torch_have (CPU build)"

llmc_have="$(installed llmcompressor)"
if [[ "$llmc_have" != "$LLMCOMPRESSOR_VERSION" ]]; then
    echo "installing llmcompressor==$LLMCOMPRESSOR_VERSION (torch held at $torch_have)"
    constraints="$(mktemp)"
    trap 'rm -f "$constraints"' EXIT
    echo "torch==$torch_have" >"$constraints"
    "$PY" -m pip install --disable-pip-version-check -c "$constraints" \
        "llmcompressor==$LLMCOMPRESSOR_VERSION"
fi

"$PY" - <<'EOF'
from importlib.metadata import version
import torch
assert not torch.version.cuda, "a CUDA torch slipped in"
for dist in ("torch", "transformers", "llmcompressor", "compressed-tensors", "datasets", "safetensors"):
    print(f"{dist:20s} {version(dist)}")
import llmcompressor  # noqa: F401  (fails here, not in the benchmark, if the install is broken)
from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier  # noqa: F401
EOF
echo "peer venv ready: $VENV"
