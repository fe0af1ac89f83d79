"""`python -m wanda_export` runs the CLI."""

from wanda_export.cli import app

app()
