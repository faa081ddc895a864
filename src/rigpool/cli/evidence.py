"""`rigpool evidence list|export|verify`: evidence records anyone can list, export and re-check.

`list` and `export` read the coordinator's `evidence` table; `verify` needs only the record file
(and, for inference records, a local copy of the claimed model) and repeats the check with
`trust.evidence.verify_evidence`. Exit codes: 0 = the record holds (or the command worked),
1 = it does not hold, or an error. Metering records need no model and never import torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rigpool.cli.common import DEFAULT_DB, DbOption, err, fail
from rigpool.trust.evidence import EvidenceCheck, EvidenceRecord, verify_evidence

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from rigpool.coordinator.tables import Evidence
    from rigpool.trust.validator import Validator

evidence_app = typer.Typer(
    help="List, export and re-verify evidence records (signed failed checks).",
    no_args_is_help=True,
)
console = Console()
SHORT_HASH = 12


def _open(db: str) -> sessionmaker[Session]:
    """Open an existing coordinator DB (a missing SQLite file is an error, not a new DB)."""
    from rigpool.coordinator.db import open_database

    if db.startswith("sqlite"):
        path = db.split("///", 1)[-1]
        if path and path != ":memory:" and not Path(path).exists():
            raise fail(f"no coordinator database at {path} (give --db URL)")
    try:
        return open_database(db)
    except Exception as exc:  # any driver or migration error: say which database
        raise fail(f"cannot open the database {db}: {exc}") from None


def _failed_checks(record: dict[str, Any]) -> list[str]:
    result = record.get("result") or {}
    failed = [c.get("name", "?") for c in result.get("checks", []) if not c.get("passed")]
    if not failed and record.get("kind") == "metering":
        return ["token counts"]
    return failed


def _when(created: datetime) -> str:
    return created.strftime("%Y-%m-%d %H:%M:%S")


@evidence_app.command("list")
def list_evidence(
    db: DbOption = DEFAULT_DB,
    provider: Annotated[str | None, typer.Option(help="Only this provider's records.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the coordinator's evidence records, newest first."""
    from sqlalchemy import select

    from rigpool.coordinator.tables import Evidence

    query = select(Evidence).order_by(Evidence.created.desc(), Evidence.id.desc())
    if provider:
        query = query.where(Evidence.provider == provider)
    with _open(db)() as session:
        rows: list[Evidence] = list(session.scalars(query))
    if json_out:
        data = [
            {
                "id": r.id,
                "created": r.created.isoformat(),
                "provider": r.provider,
                "kind": r.kind,
                "request_id": r.request_id,
                "record_hash": r.record_hash,
                "failed": _failed_checks(r.record),
            }
            for r in rows
        ]
        typer.echo(json.dumps(data, indent=2))
        return
    if not rows:
        console.print("no evidence records" + (f" for {escape(provider)}" if provider else ""))
        return
    table = Table()
    table.add_column("id", no_wrap=True, justify="right")
    table.add_column("created (UTC)")
    table.add_column("provider", overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("request", overflow="fold")
    table.add_column("hash", no_wrap=True, min_width=SHORT_HASH)
    table.add_column("failed checks", overflow="fold")
    for r in rows:
        table.add_row(
            str(r.id),
            _when(r.created),
            escape(r.provider),
            r.kind,
            escape(r.request_id),
            r.record_hash[:SHORT_HASH],
            escape(", ".join(_failed_checks(r.record))),
        )
    console.print(table)


@evidence_app.command()
def export(
    hash_prefix: Annotated[
        str, typer.Argument(metavar="HASH-OR-PREFIX", help="Record hash, or a unique prefix.")
    ],
    db: DbOption = DEFAULT_DB,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here (default: standard output).")
    ] = None,
) -> None:
    """Write one record as JSON, exactly as `EvidenceRecord.to_json()` produces it."""
    from sqlalchemy import select

    from rigpool.coordinator.tables import Evidence

    prefix = hash_prefix.strip().lower()
    if not prefix or any(ch not in "0123456789abcdef" for ch in prefix):
        raise fail(f"{hash_prefix!r} is not a record hash (hex digits, or a prefix of them)")
    query = select(Evidence).where(Evidence.record_hash.startswith(prefix)).limit(6)
    with _open(db)() as session:
        rows = list(session.scalars(query.order_by(Evidence.record_hash)))
    if not rows:
        raise fail(f"no evidence record whose hash starts with {prefix}")
    if len(rows) > 1:
        shown = ", ".join(r.record_hash[:16] for r in rows[:5])
        more = " ..." if len(rows) > 5 else ""
        raise fail(
            f"{prefix} is ambiguous: it matches {shown}{more}; give more characters of the hash"
        )
    row = rows[0]
    try:
        record = EvidenceRecord.from_json(json.dumps(row.record))
        text = record.to_json()
    except (TypeError, ValueError, KeyError) as exc:
        raise fail(f"record {row.record_hash} in the database is malformed: {exc}") from None
    if record.record_hash != row.record_hash:
        err.print(
            f"[yellow]warning:[/yellow] the stored record hashes to {record.record_hash}, "
            f"not {row.record_hash}: it was altered after it was written"
        )
    if out is None:
        typer.echo(text)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc}") from None
    err.print(f"wrote record {record.record_hash} to {escape(str(out))}")


class _NoModel(Exception):
    """The claimed model has no local copy the loader could find."""


def _parse_models(values: list[str]) -> dict[str, Path]:
    models: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise fail(f"--model {value!r} is not NAME=FOLDER")
        models[name] = Path(folder)
    return models


def _model_folder(
    name: str, models: dict[str, Path], model_dirs: list[Path], db: str | None
) -> Path:
    """Where the claimed model lives: --model, then --model-dir by folder name, then --db."""
    if name in models:
        return models[name]
    for folder in model_dirs:
        if folder.name == name or folder.resolve().name == name:
            return folder
    if db:
        from rigpool.coordinator.models import list_models

        for m in list_models(_open(db)):
            if m.name == name:
                return Path(m.path)
    looked = []
    if model_dirs:
        looked.append("--model-dir " + ", ".join(str(d) for d in model_dirs))
    if db:
        looked.append(f"the registry in {db}")
    where = f" (looked in {'; '.join(looked)})" if looked else ""
    raise _NoModel(
        f"the record claims model {name!r}, and there is no local copy of it{where}: give "
        f"--model {name}=FOLDER (a Hugging Face folder with its weights), a --model-dir "
        f"FOLDER whose folder is named {name}, or --db of a coordinator that registered it"
    )


def _loader(
    models: dict[str, Path], model_dirs: list[Path], db: str | None, dtype: str
) -> Callable[[str], Validator]:
    cache: dict[str, Validator] = {}

    def load(name: str) -> Validator:
        if name not in cache:
            folder = _model_folder(name, models, model_dirs, db)
            if not folder.is_dir():
                raise _NoModel(f"model folder {folder} for {name!r} does not exist")
            from rigpool.trust.torchops import load_model
            from rigpool.trust.validator import Validator

            err.print(f"loading {escape(name)} from {escape(str(folder))} ({dtype}) ...")
            try:
                cache[name] = Validator(load_model(folder, dtype), name)
            except (OSError, ValueError, ImportError) as exc:
                raise _NoModel(f"cannot load model {name!r} from {folder}: {exc}") from exc
        return cache[name]

    return load


def _read_record(file: Path) -> tuple[EvidenceRecord, str | None]:
    """The record in `file` and the hash the file states (None when it states none)."""
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {file}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"{file} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise fail(f"{file} is not an evidence record (expected a JSON object)")
    stated = data.get("record_hash")
    try:
        record = EvidenceRecord.from_json(text)
        record.record_hash  # noqa: B018 - hashing fails on fields JSON cannot hold
    except (TypeError, ValueError) as exc:
        raise fail(f"{file} is not an evidence record: {exc}") from None
    if record.kind not in ("inference", "metering"):
        raise fail(f"{file}: unknown evidence kind {record.kind!r}")
    if not isinstance(record.body, dict) or not isinstance(record.result, dict):
        raise fail(f"{file} is not an evidence record: body and result must be objects")
    return record, stated if isinstance(stated, str) else None


def _checks_table(check: EvidenceCheck, record: EvidenceRecord) -> Table:
    recorded = {c.get("name"): c.get("value") for c in record.result.get("checks", [])}
    table = Table("check", "value here", "limit", "passed", "recorded value")
    assert check.result is not None
    for c in check.result.checks:
        old = recorded.get(c.name)
        table.add_row(
            c.name,
            f"{c.value:.4g}",
            f"{c.limit:.4g}",
            "[green]yes[/green]" if c.passed else "[red]no[/red]",
            "-" if not isinstance(old, int | float) else f"{old:.4g}",
        )
    return table


@evidence_app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="Evidence record file (JSON, from `export`).")],
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", help="NAME=FOLDER: the local model folder for a model name; repeatable."
        ),
    ] = None,
    model_dir: Annotated[
        list[Path] | None,
        typer.Option("--model-dir", help="Model folder named like the model; repeatable."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Coordinator DB whose model registry says where models are."),
    ] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-check a record from scratch: exit 0 when it holds, 1 when it does not."""
    record, stated = _read_record(file)
    models = _parse_models(model or [])
    load = _loader(models, model_dir or [], db, dtype)
    model_name = record.body.get("model")
    try:
        if record.kind == "inference":
            if not isinstance(model_name, str):
                raise fail(f"{file}: the inference record names no model")
            load(model_name)  # find and load it before the check, for a clear error
        check = verify_evidence(record, load)
    except _NoModel as exc:
        raise fail(str(exc)) from None
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise fail(f"{file} is not a well-formed evidence record: {exc!r}") from None
    hash_note = (
        None
        if stated is None or stated == record.record_hash
        else f"the file states record_hash {stated}, but its contents hash to {record.record_hash}"
    )
    if json_out:
        out = {
            "holds": check.ok,
            "verdict": "HOLDS" if check.ok else "DOES NOT HOLD",
            "reasons": list(check.reasons),
            "kind": record.kind,
            "provider": record.provider,
            "request_id": record.request_id,
            "validator": record.validator,
            "model": model_name,
            "record_hash": record.record_hash,
            "warning": hash_note,
            "checks": None if check.result is None else check.result.to_json()["checks"],
        }
        typer.echo(json.dumps(out, indent=2))
    else:
        created = (
            _when(datetime.fromtimestamp(record.created, UTC)) + " UTC"
            if isinstance(record.created, int | float)
            else "?"
        )
        console.print(
            f"[bold]kind[/bold]       {record.kind}\n"
            f"[bold]provider[/bold]   {escape(record.provider)}\n"
            f"[bold]request[/bold]    {escape(record.request_id)}\n"
            f"[bold]validator[/bold]  {escape(record.validator)}\n"
            f"[bold]model[/bold]      {escape(str(model_name))}\n"
            f"[bold]created[/bold]    {created}\n"
            f"[bold]hash[/bold]       {record.record_hash}"
        )
        if hash_note:
            err.print(f"[yellow]warning:[/yellow] {hash_note}")
        if check.result is not None:
            console.print(_checks_table(check, record))
        if check.ok:
            console.print("[green bold]HOLDS[/green bold]: authentic, and the failure reproduces")
        else:
            console.print("[red bold]DOES NOT HOLD[/red bold]")
            for reason in check.reasons:
                console.print(f"  [red]✗[/red] {escape(reason)}")
    if not check.ok:
        raise typer.Exit(1)
