"""Storage: the schema comes from Alembic migrations only, and matches the ORM tables."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from rigpool.coordinator.db import make_engine, migrate, open_database
from rigpool.coordinator.keys import authenticate, create_key, hash_key
from rigpool.core.sqlbase import Base


def test_migrations_produce_exactly_the_orm_schema(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_api_keys_are_stored_hashed(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'k.db'}")
    key = create_key(db, name="t")
    assert key.startswith("rp-") and len(key) > 40
    raw = (tmp_path / "k.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("k.db-*")
    )
    assert key.encode() not in raw
    assert hash_key(key).encode() in raw
    assert authenticate(db, key) == (1, "apikey-1")
    assert authenticate(db, key + "x") is None
