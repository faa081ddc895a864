"""Protocol 1.6 on a live coordinator: agents keep countersigned receipts and present them.

* a paid request leaves the agent holding the countersigned receipt (in its journal, both
  signatures good, the very receipt the ledger stored) until the coordinator acknowledges it;
* the crash the issue names: the capture never reaches the database (the group-commit writer
  is killed at `commit.before_commit` of the capture's batch), the coordinator restarts on the
  same database (start-up recovery releases the hold), the agent comes back with its journal
  and presents the receipt: the consumer is charged exactly once, the provider and the
  treasury paid, the audit clean, and presenting it again moves nothing;
* receipts that are not acceptable are refused (and acknowledged as such) without counting
  against the presenting agent; with billing off nothing is recorded and the agent is told.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import openai
from sqlalchemy import select

from netsupport import API_KEY, AgentThread, RawAgent, ServerThread, make_settings, wait_for
from rigpool.agent.backends.emulated import EmulatedBackend
from rigpool.agent.setup import ProvideOptions, capabilities_for
from rigpool.coordinator.keys import create_key
from rigpool.devnet.localnet import TOY_MODEL_NAME
from rigpool.ledger import Ledger, SignedReceipt, audit
from rigpool.ledger.receipts import ReceiptBody, agent_sign, countersign
from rigpool.ledger.tables import Receipt
from rigpool.protocol.messages import (
    RECEIPT_AGENT_DOMAIN,
    Capabilities,
    CountersignedReceipt,
    Done,
    ModelOffer,
    Receipts,
    ReceiptSignature,
    Token,
)
from rigpool.protocol.signing import Identity, load_or_create_identity

CONSUMER = "alice-wallet"
FUNDS = 10_000_000
FEE_BPS = 1000


def settings_for(tmp_path: Path, toy_model: Path, **overrides: Any) -> Any:
    return make_settings(tmp_path, [toy_model], billing=True, network_fee_bps=FEE_BPS, **overrides)


def start_agent(
    server: ServerThread,
    toy_model: Path,
    journal: Path,
    identity: Identity | None = None,
    time_scale: float = 0.05,
) -> AgentThread:
    backend = EmulatedBackend(
        "A100 80GB", TOY_MODEL_NAME, time_scale=time_scale, tokenizer_dir=toy_model
    )
    options = ProvideOptions(backend="auto", price_in=2.0, price_out=4.0)
    caps, _ = capabilities_for(backend, options)
    agent = AgentThread(
        server.url, backend, identity=identity, receipts_path=journal, models=caps.models
    ).start()
    wait_for(lambda: server.agents_online() >= 1, what="agent online")
    return agent


def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


def journal_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stored_receipt(server: ServerThread, request_id: str) -> SignedReceipt | None:
    with server.db() as s:
        row = s.scalar(select(Receipt).where(Receipt.request_id == request_id))
    return None if row is None else SignedReceipt.model_validate(row.body)


def present(raw: RawAgent, receipts: list[dict[str, Any]]) -> dict[str, Any]:
    """Send a `receipts` frame and return the coordinator's `receipts_ack`."""
    raw.send(Receipts(receipts=[CountersignedReceipt.model_validate(r) for r in receipts]))
    while True:
        frame = raw.recv(timeout=20)
        if frame["type"] == "receipts_ack":
            return frame


def test_a_paid_request_leaves_the_agent_holding_its_receipt_until_acknowledged(
    tmp_path, toy_model
):
    journal = tmp_path / "agent-receipts.jsonl"
    with ServerThread(settings_for(tmp_path, toy_model)) as server:
        create_key(server.db, key=API_KEY, consumer=CONSUMER)
        Ledger(server.db).credit_deposit(CONSUMER, FUNDS, "a" * 64)
        agent = start_agent(server, toy_model, journal)
        try:
            reply = client(server).completions.create(
                model=TOY_MODEL_NAME, prompt="pay me", max_tokens=5
            )
            # handed back and journaled...
            wait_for(
                lambda: any("add" in line for line in journal_lines(journal)),
                what="receipt in the agent's journal",
            )
            # ...then acknowledged once the receipt and the capture are durable: forgotten
            wait_for(
                lambda: any("ack" in line for line in journal_lines(journal)),
                what="receipt acknowledged",
            )
            wait_for(lambda: len(agent.agent.receipts) == 0, what="receipt dropped")
        finally:
            agent.stop()
        lines = journal_lines(journal)
        assert lines[-1] == {"ack": [reply.id]}
        held = SignedReceipt.model_validate(lines[0]["add"])
        held.verify()  # both signatures, checked the ledger's way
        assert held == stored_receipt(server, reply.id)
        assert held.body.provider == agent.identity.agent_id
        assert held.body.completion_tokens == reply.usage.completion_tokens
        # the acknowledgement came only once the capture was durable
        ledger = Ledger(server.db)
        assert ledger.balance("consumer", CONSUMER) == FUNDS - held.body.amount
        assert ledger.balance("provider_earnings", agent.identity.agent_id) == (
            held.body.provider_amount
        )
        assert audit(ledger) == []


def test_a_capture_lost_in_a_crash_is_charged_from_the_agents_receipt(tmp_path, toy_model):
    journal = tmp_path / "agent-receipts.jsonl"
    settings = settings_for(tmp_path, toy_model)
    with ServerThread(settings) as first:
        create_key(first.db, key=API_KEY, consumer=CONSUMER)
        Ledger(first.db).credit_deposit(CONSUMER, FUNDS, "b" * 64)
        agent = start_agent(first, toy_model, journal, time_scale=1.0)
        identity = agent.identity
        try:
            stream = client(first).completions.create(
                model=TOY_MODEL_NAME, prompt="crash me", max_tokens=12, stream=True
            )
            chunks = iter(stream)
            first_chunk = next(chunks)  # the hold is durable: it was committed before dispatch
            request_id = first_chunk.id
            group = first.state.billing.writer.group
            # The next batch the writer commits is the end of this request (capture + row):
            # the writer dies before its COMMIT, as a killed process would.
            group.faults.armed.add("commit.before_commit")
            rest = list(chunks)
            assert rest, "the stream went on"
            wait_for(lambda: group.crashed is not None, what="the writer crashed")
            wait_for(lambda: request_id in agent.agent.receipts, what="agent holds the receipt")
        finally:
            agent.stop()
        ledger = Ledger(first.db)
        assert ledger.balance("consumer_hold", CONSUMER) > 0  # the hold is still active
        assert ledger.balance("provider_earnings", identity.agent_id) == 0
        assert stored_receipt(first, request_id) is None  # the receipt did not reach it either
    held = SignedReceipt.model_validate(journal_lines(journal)[0]["add"])
    held.verify()
    assert held.body.request_id == request_id and held.body.amount > 0
    assert held.body.coordinator == load_or_create_identity(settings.identity_path)[0].agent_id

    # A new coordinator on the same database and key: start-up recovery releases the hold.
    with ServerThread(settings) as second:
        ledger = Ledger(second.db)
        assert ledger.balance("consumer_hold", CONSUMER) == 0
        assert ledger.balance("consumer", CONSUMER) == FUNDS  # released: nobody paid yet
        # The agent comes back with its journal and presents what was never acknowledged.
        agent = start_agent(second, toy_model, journal, identity=identity)
        try:
            wait_for(lambda: len(agent.agent.receipts) == 0, what="receipt acknowledged")
        finally:
            agent.stop()
        assert journal_lines(journal)[-1] == {"ack": [request_id]}
        body = held.body
        assert ledger.balance("consumer", CONSUMER) == FUNDS - body.amount  # charged once
        assert ledger.balance("consumer_hold", CONSUMER) == 0
        assert ledger.balance("provider_earnings", identity.agent_id) == body.provider_amount
        treasury = sum(v for (kind, _), v in ledger.balances().items() if kind == "treasury")
        assert treasury == body.fee
        assert stored_receipt(second, request_id) == held
        assert audit(ledger) == []

        # Presenting it again (the agent's copy, by the agent's key) moves nothing.
        raw = RawAgent(second.url, agent.agent.capabilities, identity=identity)
        try:
            ack = present(raw, [held.model_dump(mode="json")])
        finally:
            raw.close()
        assert ack["durable"] == [request_id] and ack["refused"] == []
        assert ledger.balance("consumer", CONSUMER) == FUNDS - body.amount
        assert ledger.balance("provider_earnings", identity.agent_id) == body.provider_amount
        assert audit(ledger) == []


CAPS = Capabilities(
    backend="emulated", emulated=True, models=[ModelOffer(name=TOY_MODEL_NAME, context_length=2048)]
)


def forged(
    request_id: str, provider: Identity, coordinator: Identity, amount: int = 10
) -> dict[str, Any]:
    body = ReceiptBody(
        request_id=request_id,
        model=TOY_MODEL_NAME,
        prompt_tokens=1,
        completion_tokens=1,
        price_input_per_million=0,
        price_output_per_million=0,
        amount=amount,
        fee=0,
        provider_amount=amount,
        provider=provider.agent_id,
        consumer=CONSUMER,
        coordinator=coordinator.agent_id,
        time=datetime(2026, 1, 1),
    )
    return countersign(body, agent_sign(body, provider), coordinator).model_dump(mode="json")


def test_unacceptable_receipts_are_refused_and_never_count_against_the_agent(tmp_path, toy_model):
    settings = settings_for(tmp_path, toy_model)
    with ServerThread(settings) as server:
        Ledger(server.db).credit_deposit(CONSUMER, FUNDS, "c" * 64)
        me = load_or_create_identity(settings.identity_path)[0]
        raw = RawAgent(server.url, CAPS)
        try:
            wait_for(lambda: server.agents_online() == 1)
            someone = Identity.generate()
            tampered = forged("tampered", raw.identity, me)
            tampered["body"]["amount"] = tampered["body"]["provider_amount"] = 11
            ack = present(
                raw,
                [
                    forged("no-hold", raw.identity, me),  # genuine, but no such request here
                    forged("elsewhere", raw.identity, Identity.generate()),
                    forged("theirs", someone, me),
                    tampered,
                ],
            )
            session = server.state.hub.sessions[raw.identity.agent_id]
            assert session.garbage_frames == 0
        finally:
            raw.close()
        assert ack["durable"] == []
        reasons = {r["request_id"]: r["reason"] for r in ack["refused"]}
        assert set(reasons) == {"no-hold", "elsewhere", "theirs", "tampered"}
        assert "hold" in reasons["no-hold"]
        assert "another coordinator" in reasons["elsewhere"]
        assert "another provider" in reasons["theirs"]
        assert "signature" in reasons["tampered"]
        ledger = Ledger(server.db)
        assert ledger.balance("consumer", CONSUMER) == FUNDS
        assert ledger.balance("provider_earnings", raw.identity.agent_id) == 0
        assert audit(ledger) == []


def test_with_billing_off_the_agent_is_told_and_keeps_its_receipts(tmp_path, toy_model):
    settings = make_settings(tmp_path, [toy_model], billing=False)
    with ServerThread(settings) as server:
        raw = RawAgent(server.url, CAPS)
        try:
            ack = present(raw, [forged("r1", raw.identity, Identity.generate())])
        finally:
            raw.close()
    assert ack["durable"] == [] and ack["refused"] == []
    assert "billing is off" in ack["note"]


def test_a_1_5_agent_gets_no_receipt_frames_and_is_still_paid(tmp_path, toy_model):
    caps = CAPS.model_copy(
        update={
            "models": [ModelOffer(name=TOY_MODEL_NAME, context_length=2048, price_out_per_mtok=4.0)]
        }
    )
    with ServerThread(settings_for(tmp_path, toy_model)) as server:
        create_key(server.db, key=API_KEY, consumer=CONSUMER)
        Ledger(server.db).credit_deposit(CONSUMER, FUNDS, "d" * 64)
        raw = RawAgent(server.url, caps, protocol_version="1.5")
        assert "coordinator_id" in raw.welcome  # a 1.5 agent ignores the new field
        seen: list[str] = []

        def serve() -> None:
            try:
                while True:
                    frame = raw.recv()
                    seen.append(str(frame["type"]))
                    if frame["type"] == "generate":
                        rid = str(frame["request_id"])
                        raw.send(Token(request_id=rid, index=0, text=" paid"))
                        raw.send(Done(request_id=rid, finish_reason="length"))
                    elif frame["type"] == "sign_receipt":
                        body = str(frame["body"])
                        signature = raw.identity.sign(RECEIPT_AGENT_DOMAIN + body.encode())
                        raw.send(
                            ReceiptSignature(
                                attempt_id=str(frame["attempt_id"]), signature=signature
                            )
                        )
            except Exception:
                return

        threading.Thread(target=serve, daemon=True).start()
        try:
            wait_for(lambda: server.agents_online() == 1)
            reply = client(server).completions.create(
                model=TOY_MODEL_NAME, prompt="old agent", max_tokens=1
            )
            wait_for(lambda: stored_receipt(server, reply.id) is not None, what="receipt")
            wait_for(lambda: "sign_receipt" in seen, what="receipt signed")
            time.sleep(0.3)  # past the acknowledgement window
        finally:
            raw.close()
        assert not {"receipt_countersigned", "receipts_ack"} & set(seen), seen
        ledger = Ledger(server.db)
        receipt = stored_receipt(server, reply.id)
        assert receipt is not None and receipt.body.amount > 0
        assert ledger.balance("consumer", CONSUMER) == FUNDS - receipt.body.amount
        assert audit(ledger) == []
