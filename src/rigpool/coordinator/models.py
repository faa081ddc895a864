"""The model registry: which models the gateway can meter, with their tokenizer and context.

A model is registered from a Hugging Face folder (config.json + tokenizer.json). Agents may only
serve registered models: an unmetered model could not be billed honestly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.tables import Model
from rigpool.core.errors import BadRequest


def context_length_of(folder: Path) -> int:
    config_file = folder / "config.json"
    if not config_file.exists():
        raise BadRequest(f"{folder} has no config.json")
    config = json.loads(config_file.read_text())
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return int(config[key])
    raise BadRequest(f"{folder}/config.json names no context length (max_position_embeddings)")


def register_model(db: sessionmaker[Session], folder: Path, name: str | None = None) -> Model:
    """Register (or refresh) a model from its folder; the name defaults to the folder's name."""
    folder = folder.resolve()
    if not (folder / "tokenizer.json").exists():
        raise BadRequest(f"{folder} has no tokenizer.json; the gateway could not count tokens")
    name = name or folder.name
    context = context_length_of(folder)
    with db.begin() as session:
        row = session.get(Model, name)
        if row is None:
            row = Model(
                name=name,
                path=str(folder),
                context_length=context,
                created=datetime.now(UTC).replace(tzinfo=None),
            )
            session.add(row)
        else:
            row.path, row.context_length = str(folder), context
    return row


def list_models(db: sessionmaker[Session]) -> list[Model]:
    with db() as session:
        return list(session.scalars(select(Model).order_by(Model.name)))
