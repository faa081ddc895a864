"""What every `rigpool` command group shares: the error console, `--db`, and failing clearly."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)

DEFAULT_DB = "sqlite:///.rigpool/coordinator.db"

DbOption = Annotated[
    str,
    typer.Option(
        "--db", envvar="RIGPOOL_DATABASE_URL", help="SQLAlchemy URL of the coordinator DB."
    ),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as an error (never as markup) and return the exit to raise."""
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)
