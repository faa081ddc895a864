"""The requests table behind the gateway's `RequestStore` port, on SQLite and PostgreSQL.

Lives beside the money tests to share their databases (`db_url`: a SQLite file and a real
embedded PostgreSQL): every store implementation runs the same contract.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from rigpool.coordinator.db import open_database
from rigpool.coordinator.request_store import ROWS, SqlRequestStore, _RowWrite
from rigpool.coordinator.tables import RequestRecord
from rigpool.gateway.request import IdempotentReplay, ModelInfo, Outcome, RequestSpec
from rigpool.ledger.group_commit import GroupCommit
from rigpool.protocol.messages import Sampling


def spec(request_id: str, key: str) -> RequestSpec:
    return RequestSpec(
        request_id=request_id,
        api_key_id=7,
        consumer="c",
        idempotency_key=key,
        endpoint="completions",
        model=ModelInfo("m", "/nowhere", 2048),
        tokenizer=None,
        prompt="p",
        messages=None,
        sampling=Sampling(max_tokens=4),
        stream=False,
        prompt_tokens=3,
    )


def rows(db):
    with db() as s:
        return {r.id: r for r in s.scalars(select(RequestRecord))}


def test_admit_replay_and_finish(db_url):
    db = open_database(db_url)
    with GroupCommit(db) as writer:
        store = SqlRequestStore(db, writer)

        async def scenario() -> None:
            await store.admit(spec("r1", "k1"))
            with pytest.raises(IdempotentReplay) as replay:
                await store.admit(spec("r2", "k1"))
            assert replay.value.response is None  # still running: a conflict, not a replay
            out = Outcome(provider_id="agent", attempts=1, billed_tokens=4, claimed_tokens=4)
            await store.finish(spec("r1", "k1"), out, status="ok", error=None, response={"a": 1})
            with pytest.raises(IdempotentReplay) as replay:
                await store.admit(spec("r3", "k1"))
            assert replay.value.response == {"a": 1}
            await store.admit(spec("r4", "k2"))
            await store.finish(
                spec("r4", "k2"), Outcome(), status="error", error="x", response=None
            )
            await store.admit(spec("r5", "k2"))  # a failed request freed its key

        asyncio.run(scenario())
    found = rows(db)
    assert set(found) == {"r1", "r4", "r5"}
    assert found["r1"].status == "ok" and found["r1"].completion_tokens == 4
    assert found["r4"].status == "error" and found["r4"].idempotency_key.startswith("k2:failed:")
    assert store.tokens_used_today(7) == 3 + 4 + 3 + 3
    db.kw["bind"].dispose()


def test_a_colliding_insert_fails_alone_in_its_batch(db_url):
    db = open_database(db_url)
    ok = {"api_key_id": 1, "endpoint": "chat", "model": "m", "created": None}

    def insert(request_id: str, key: str) -> _RowWrite:
        from datetime import datetime

        return _RowWrite("insert", {**ok, "id": request_id, "idempotency_key": key,
                                    "created": datetime(2026, 1, 1)})  # fmt: skip

    with db.begin() as s:
        assert ROWS.run_batch(s, [insert("a", "k-a")]) == [(True, None)]
    with db.begin() as s:
        outcomes = ROWS.run_batch(
            s,
            [
                insert("b", "k-b"),
                insert("c", "k-a"),  # the key of "a": collides
                _RowWrite("update", {"_id": "a", "status": "ok", "attempts": 2}),
                _RowWrite("update", {"_id": "b", "status": "error", "idempotency_key": "k-b:x"}),
                insert("d", "k-d"),
            ],
        )
    assert [ok for ok, _ in outcomes] == [True, False, True, True, True]
    found = rows(db)
    assert set(found) == {"a", "b", "d"}
    assert found["a"].status == "ok" and found["a"].attempts == 2
    assert found["b"].status == "error" and found["b"].idempotency_key == "k-b:x"
    db.kw["bind"].dispose()
