"""`python -m rigpool` is the `rigpool` command."""

from rigpool.cli.main import app

app()
