"""`rigpool validator report`: sign one epoch's provider scores and post them to a coordinator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from rigpool.cli.common import err

validator_app = typer.Typer(
    help="Act as a validator: report provider scores.", no_args_is_help=True
)


@validator_app.callback()
def _validator_group() -> None:
    """Act as a validator (a group, so `rigpool validator report` keeps its name)."""


@validator_app.command()
def report(
    scores: Annotated[
        Path, typer.Option("--scores", help="JSON file: {provider id: score in [0, 1]}.")
    ],
    epoch: Annotated[int, typer.Option("--epoch", help="Epoch number; must grow per report.")],
    identity: Annotated[
        Path, typer.Option("--identity", help="The validator's keypair file (Solana JSON).")
    ],
    coordinator: Annotated[str, typer.Option(help="Coordinator URL.")] = "http://127.0.0.1:8000",
) -> None:
    """Sign a score report with the validator's key, post it and print the coordinator's answer."""
    import httpx

    from rigpool.coordinator.validators import sign_report
    from rigpool.protocol.signing import load_or_create_identity

    try:
        table = json.loads(scores.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read {scores}: {exc}", param_hint="--scores") from None
    if not isinstance(table, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in table.values()
    ):
        raise typer.BadParameter(
            "expected a JSON object of provider id -> number", param_hint="--scores"
        )
    try:
        me, created = load_or_create_identity(identity)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--identity") from None
    if created:
        err.print(f"created a new validator key {me.agent_id} in {identity}; it must be registered")
    try:
        signed = sign_report(me, epoch, {str(k): float(v) for k, v in table.items()})
    except ValueError as exc:  # pydantic: a score outside [0, 1], a bad provider id
        raise typer.BadParameter(str(exc), param_hint="--scores") from None
    try:
        response = httpx.post(
            coordinator.rstrip("/") + "/v1/validators/reports",
            content=signed.model_dump_json(),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/red] cannot reach {coordinator}: {exc}")
        raise typer.Exit(1) from None
    is_json = "json" in response.headers.get("content-type", "")
    typer.echo(json.dumps(response.json(), indent=2) if is_json else response.text)
    if response.status_code >= 400:
        raise typer.Exit(1)
