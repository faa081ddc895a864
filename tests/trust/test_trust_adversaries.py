"""The adversarial suite, live: cheating agents as real processes, a real billed coordinator.

Every agent is a separate `python -m rigpool.devnet.adversaries KIND` process with a real
PyTorch backend and a bonded stake. Traffic goes through the official openai client. Every
request is checked (check rate floor 1.0, so the test is short and deterministic in what it
shows); the suite's rates at the production check rates are in bench/trust.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import select

from netsupport import API_KEY, ServerThread, make_settings, wait_for
from rigpool.coordinator.keys import create_key
from rigpool.coordinator.models import register_model
from rigpool.coordinator.tables import Evidence
from rigpool.ledger import Ledger, audit
from rigpool.ledger.tables import Slash
from rigpool.protocol.signing import load_or_create_identity
from rigpool.trust.evidence import EvidenceRecord, verify_evidence
from rigpool.trust.simulate import CLAIMED_MODEL

pytestmark = pytest.mark.slow

CONSUMER = "adversarial-consumer"
STAKE = 1_000_000
WORDS = "the network pools idle cards for inference and pays every provider per token".split()  # noqa: SIM905


class Adversary:
    def __init__(self, kind: str, server: ServerThread, models: Path, tmp: Path, dtype: str):
        self.kind = kind
        key = tmp / f"{kind}-{dtype}.json"
        self.identity, _ = load_or_create_identity(key)
        Ledger(server.db).stake(
            self.identity.agent_id, STAKE, f"stake-{kind}-{dtype}".ljust(64, "0")
        )
        self.log = open(tmp / f"{kind}-{dtype}.log", "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "rigpool.devnet.adversaries", kind,
                "--coordinator", server.url, "--models", str(models),
                "--identity", str(key), "--dtype", dtype,
            ],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def network(tmp_path, trust_models):
    settings = make_settings(
        tmp_path,
        [],
        billing=True,
        check_rate_floor=1.0,
        check_rate_cap=1.0,
        slash_min_records=3,
        # Round-robin gives every agent its share from the first batch, so each kind is checked
        # within a few requests (the P2C router spreads load too, but by latency, not evenly).
        routing_policy="round-robin",
        first_token_timeout_s=20.0,
        inter_token_timeout_s=3.0,
        request_timeout_s=60.0,
    )
    with ServerThread(settings) as server:
        register_model(server.db, trust_models.claimed, name=CLAIMED_MODEL)
        server.app.state.coordinator.refresh_models()
        create_key(server.db, key=API_KEY, consumer=CONSUMER)
        Ledger(server.db).credit_deposit(CONSUMER, 10**12, "f" * 64)
        yield server


def trust_view(server) -> dict:
    return httpx.get(server.url + "/v1/trust", timeout=10).json()


def send(client: openai.OpenAI, indices: range, all_greedy: bool) -> None:
    """Requests 8 at a time (every other one greedy unless `all_greedy`), seeded by index."""

    def one(i: int) -> None:
        client.completions.create(
            model=CLAIMED_MODEL,
            prompt=" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(6 + i % 5)),
            max_tokens=24,
            temperature=0.0 if all_greedy or i % 2 else 1.0,
            seed=i,
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, indices))


def test_cheaters_are_caught_slashed_and_expelled_honest_agents_never(
    network, trust_models, tmp_path
):
    kinds = [
        ("honest", "float32"), ("honest", "bfloat16"), ("smaller", "float32"),
        ("quantized4", "float32"), ("random_text", "float32"), ("cached", "float32"),
        ("inflate", "float32"),
    ]  # fmt: skip
    agents = [Adversary(k, network, trust_models.claimed.parent, tmp_path, d) for k, d in kinds]
    try:
        state = network.app.state.coordinator
        wait_for(lambda: all(a.agent_id in state.fleet for a in agents), 120, "agents routable")
        client = openai.OpenAI(base_url=network.url + "/v1", api_key=API_KEY, max_retries=2)
        cheaters = {a.agent_id for a in agents if a.kind != "honest"}
        for batch in range(12):
            if cheaters <= set(state.banned):
                break
            send(client, range(batch * 8, batch * 8 + 8), all_greedy=False)
        wait_for(lambda: state.verifier.idle, 60, "checks done")
        view = trust_view(network)["providers"]
        for a in agents:
            print(a.kind, json.dumps(view.get(a.agent_id)))

        ledger = Ledger(network.db)
        with ledger.sessions() as s:
            slashed = {row.provider: row for row in s.scalars(select(Slash))}
        for a in agents:
            if a.kind == "honest":
                assert view[a.agent_id]["failed"] == 0, a.kind
                assert view[a.agent_id]["checked"] >= 1, a.kind
                assert a.agent_id not in slashed and a.agent_id not in state.banned
                assert ledger.balance("provider_stake", a.agent_id) == STAKE
            else:
                assert a.agent_id in state.banned, f"{a.kind} was not expelled"
                row = slashed[a.agent_id]
                fraction = 0.1 if a.kind == "inflate" else 0.5
                assert row.amount == int(STAKE * fraction), a.kind
                assert ledger.balance("provider_stake", a.agent_id) == STAKE - row.amount
        assert audit(ledger) == []

        # Every stored record re-verifies from scratch with the re-checker's own model.
        from rigpool.trust.torchops import load_model
        from rigpool.trust.validator import Validator

        checker = Validator(load_model(trust_models.claimed), CLAIMED_MODEL)
        with network.db() as s:
            rows = list(s.scalars(select(Evidence)))
        assert {r.provider for r in rows} == set(slashed)
        for row in rows:
            record = EvidenceRecord.from_json(json.dumps(row.record))
            check = verify_evidence(record, lambda _name: checker)
            assert check.ok, (row.kind, check.reasons)
        # Each slash names the records it was decided on: at least 3 distinct requests (later
        # records, of requests served before the expulsion, are kept but slash nobody twice).
        for provider, slash in slashed.items():
            used = [r for r in rows if r.provider == provider and r.slash_ref is not None]
            assert len({r.request_id for r in used}) >= 3
            assert {r.slash_ref for r in used} == {slash.evidence_ref}
        # An expelled agent may not come back.
        time.sleep(1.0)
        assert all(a.agent_id not in state.hub.sessions for a in agents if a.kind != "honest")
    finally:
        for a in agents:
            a.stop()


def test_prefill_cheat_other_model_and_stalls(network, trust_models, tmp_path):
    """(a/c) cheap generation + prefill, (a) another model, (f) an agent that stalls."""
    kinds = [("honest", "float32"), ("prefill_cheat", "float32"), ("other", "float32"),
             ("stall", "float32")]  # fmt: skip
    agents = {k: Adversary(k, network, trust_models.claimed.parent, tmp_path, d) for k, d in kinds}
    try:
        state = network.app.state.coordinator
        ids = {k: a.agent_id for k, a in agents.items()}
        wait_for(lambda: all(i in state.fleet for i in ids.values()), 120, "agents routable")
        client = openai.OpenAI(base_url=network.url + "/v1", api_key=API_KEY, max_retries=2)
        for batch in range(8):
            if {ids["prefill_cheat"], ids["other"]} <= set(state.banned):
                break
            send(client, range(batch * 8, batch * 8 + 8), all_greedy=True)
        wait_for(lambda: state.verifier.idle, 60, "checks done")
        view = trust_view(network)["providers"]
        assert ids["prefill_cheat"] in state.banned and ids["other"] in state.banned
        # Greedy requests give the prefill cheat away: its tokens are not the model's argmax.
        assert "greedy_argmax" in view[ids["prefill_cheat"]]["last_failure"]
        assert view[ids["honest"]]["failed"] == 0
        # A staller is not fraud (no evidence, no slash) but its record sinks its reputation.
        assert ids["stall"] not in state.banned
        assert state.service.record(ids["stall"]).drops >= 1
        assert state.reputation(ids["stall"]) < state.reputation(ids["honest"])
    finally:
        for a in agents.values():
            a.stop()
