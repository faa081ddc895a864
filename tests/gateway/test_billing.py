"""Escrow per request on a live coordinator: hold, capture from the gateway's count, release."""

from __future__ import annotations

import httpx
import openai
import pytest

from netsupport import API_KEY, AgentThread, ServerThread, make_settings, wait_for
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.agent.setup import ProvideOptions, capabilities_for
from rigpool.coordinator.keys import create_key
from rigpool.devnet.localnet import TOY_MODEL_NAME
from rigpool.ledger import Ledger, audit

CONSUMER = "alice-wallet"
PRICE_IN, PRICE_OUT = 2.0, 4.0  # USD per million tokens -> 2,000,000 and 4,000,000 base units


@pytest.fixture
def billed(tmp_path, toy_model):
    settings = make_settings(tmp_path, [toy_model], billing=True, network_fee_bps=1000)
    with ServerThread(settings) as server:
        create_key(server.db, key=API_KEY, consumer=CONSUMER)
        yield server


def provider(server, toy_model):
    backend = EmulatedBackend("A100 80GB", TOY_MODEL_NAME, time_scale=0.05, tokenizer_dir=toy_model)
    options = ProvideOptions(backend="auto", price_in=PRICE_IN, price_out=PRICE_OUT)
    caps, _ = capabilities_for(backend, options)
    agent = AgentThread(server.url, backend, models=caps.models).start()
    wait_for(lambda: server.agents_online() >= 1)
    return agent


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


def test_no_balance_is_429_insufficient_quota_and_nothing_moves(billed, toy_model):
    agent = provider(billed, toy_model)
    with pytest.raises(openai.RateLimitError, match="deposit funds") as info:
        client(billed).completions.create(model=TOY_MODEL_NAME, prompt="hi", max_tokens=8)
    assert info.value.code == "insufficient_quota"
    assert audit(Ledger(billed.db)) == []
    agent.stop()


def test_capture_uses_the_gateways_count_and_the_providers_price(billed, toy_model):
    agent = provider(billed, toy_model)
    ledger = Ledger(billed.db)
    ledger.credit_deposit(CONSUMER, 10_000_000, "d" * 64)
    reply = client(billed).completions.create(model=TOY_MODEL_NAME, prompt="hello", max_tokens=8)
    usage = reply.usage
    cost = -(-(usage.prompt_tokens * 2_000_000 + usage.completion_tokens * 4_000_000) // 10**6)
    assert ledger.balance("consumer", CONSUMER) == 10_000_000 - cost
    assert ledger.balance("consumer_hold", CONSUMER) == 0
    fee = cost * 1000 // 10_000
    assert ledger.balance("provider_earnings", agent.identity.agent_id) == cost - fee
    assert sum(v for (kind, _), v in ledger.balances().items() if kind == "treasury") == fee
    assert audit(ledger) == []
    agent.stop()


def test_failed_request_costs_nothing(billed, toy_model):
    ledger = Ledger(billed.db)
    ledger.credit_deposit(CONSUMER, 10_000_000, "e" * 64)
    response = httpx.post(
        billed.url + "/v1/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": TOY_MODEL_NAME, "prompt": "x", "max_tokens": 4},
    )
    assert response.status_code == 503  # nobody serves the model
    assert ledger.balance("consumer", CONSUMER) == 10_000_000
    assert ledger.balance("consumer_hold", CONSUMER) == 0
    assert audit(ledger) == []


def test_idempotent_retry_is_charged_once(billed, toy_model):
    agent = provider(billed, toy_model)
    ledger = Ledger(billed.db)
    ledger.credit_deposit(CONSUMER, 10_000_000, "f" * 64)
    body = {"model": TOY_MODEL_NAME, "prompt": "once", "max_tokens": 6}
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "pay-once"}
    first = httpx.post(billed.url + "/v1/completions", headers=headers, json=body)
    after_first = ledger.balance("consumer", CONSUMER)
    second = httpx.post(billed.url + "/v1/completions", headers=headers, json=body)
    assert first.json() == second.json()
    assert ledger.balance("consumer", CONSUMER) == after_first < 10_000_000
    agent.stop()


def test_paid_request_gets_a_receipt_signed_by_agent_and_coordinator(billed, toy_model):
    from sqlalchemy import select

    from rigpool.ledger import SignedReceipt
    from rigpool.ledger.tables import Receipt

    agent = provider(billed, toy_model)
    Ledger(billed.db).credit_deposit(CONSUMER, 10_000_000, "a" * 64)
    reply = client(billed).completions.create(model=TOY_MODEL_NAME, prompt="pay me", max_tokens=5)

    def stored():
        with billed.db() as s:
            return s.scalar(select(Receipt).where(Receipt.request_id == reply.id))

    wait_for(lambda: stored() is not None, what="receipt recorded")
    receipt = SignedReceipt.model_validate(stored().body)
    receipt.verify()  # both signatures and the arithmetic
    assert receipt.body.provider == agent.identity.agent_id
    assert receipt.body.completion_tokens == reply.usage.completion_tokens
    agent.stop()


def test_streamed_request_is_billed_and_receipted(billed, toy_model):
    from sqlalchemy import func, select

    from rigpool.ledger.tables import Receipt

    agent = provider(billed, toy_model)
    Ledger(billed.db).credit_deposit(CONSUMER, 10_000_000, "b" * 64)
    c = client(billed)
    for _ in range(2):
        list(c.chat.completions.create(
            model=TOY_MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            stream=True,
        ))  # fmt: skip

    def count():
        with billed.db() as s:
            return s.scalar(select(func.count()).select_from(Receipt))

    wait_for(lambda: count() == 2, what="two receipts")
    assert audit(Ledger(billed.db)) == []
    agent.stop()


def test_inflated_token_claims_become_evidence_and_lower_reputation(billed, toy_model):
    """An agent that claims more tokens than it sent is caught by the gateway's own count."""
    from sqlalchemy import select

    from rigpool.coordinator.tables import Evidence
    from rigpool.trust.evidence import EvidenceRecord

    class Inflating(EmulatedBackend):
        async def generate(self, request):  # type: ignore[override]
            from rigpool.agent.backends.base import Finish

            async for item in super().generate(request):
                if isinstance(item, Finish):
                    item = Finish(item.finish_reason, item.completion_tokens * 3)
                yield item

    backend = Inflating("A100 80GB", TOY_MODEL_NAME, time_scale=0.05, tokenizer_dir=toy_model)
    options = ProvideOptions(backend="auto", price_in=PRICE_IN, price_out=PRICE_OUT)
    caps, _ = capabilities_for(backend, options)
    agent = AgentThread(billed.url, backend, models=caps.models).start()
    wait_for(lambda: billed.agents_online() == 1)
    Ledger(billed.db).credit_deposit(CONSUMER, 10_000_000, "c" * 64)
    reply = client(billed).completions.create(model=TOY_MODEL_NAME, prompt="x", max_tokens=6)
    assert reply.usage.completion_tokens == 6  # billed from the gateway's count
    with billed.db() as s:
        rows = list(s.scalars(select(Evidence)))
    assert len(rows) == 1 and rows[0].provider == agent.identity.agent_id
    record = EvidenceRecord.from_json(__import__("json").dumps(rows[0].record))
    assert record.kind == "metering" and record.body["claimed_completion_tokens"] == 18
    state = billed.app.state.coordinator
    assert state.fleet.get(agent.identity.agent_id).reputation < 0.6
    agent.stop()


def test_restart_ends_interrupted_requests_and_releases_their_holds(tmp_path, toy_model):
    """A coordinator crash mid-request: after restart the row is a retryable error, the hold
    is released and the same Idempotency-Key may be used again."""
    from datetime import datetime

    from rigpool.coordinator.db import open_database
    from rigpool.coordinator.recovery import INTERRUPTED, recover_interrupted
    from rigpool.coordinator.tables import RequestRecord

    db = open_database(f"sqlite:///{tmp_path / 'r.db'}")
    ledger = Ledger(db)
    ledger.credit_deposit(CONSUMER, 1_000, "g" * 64)
    hold = ledger.hold(CONSUMER, 600, key="req-1:hold")
    with db.begin() as s:
        s.add(
            RequestRecord(
                id="req-1", api_key_id=1, idempotency_key="same-key", endpoint="chat",
                model="m", created=datetime(2026, 1, 1),
            )
        )  # fmt: skip
    assert recover_interrupted(db) == (1, 1)
    with db() as s:
        row = s.get(RequestRecord, "req-1")
    assert row.status == "error" and row.error == INTERRUPTED
    assert row.idempotency_key != "same-key"
    assert ledger.hold_info(hold).state == "released"
    assert ledger.balance("consumer", CONSUMER) == 1_000
    assert audit(ledger) == []
