"""The agent's receipt journal: kept on disk until acknowledged, torn lines survived, bounded."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from receiptsupport import signed_receipt, wire
from rigpool.agent.receipt_journal import ReceiptJournal, default_journal_path
from rigpool.protocol.messages import CountersignedReceipt
from rigpool.protocol.signing import Identity

AGENT = Identity.generate()
COORDINATOR = Identity.generate()
OTHER_COORDINATOR = Identity.generate()


def receipt(request_id: str, coordinator: Identity = COORDINATOR) -> CountersignedReceipt:
    return wire(signed_receipt(request_id, agent=AGENT, coordinator=coordinator))


def test_default_path_is_beside_the_keypair(tmp_path: Path):
    path = default_journal_path(tmp_path / "provider-keypair.json")
    assert path == tmp_path / "provider-keypair-receipts.jsonl"


def test_receipts_survive_a_reload_until_acknowledged(tmp_path: Path):
    path = tmp_path / "receipts.jsonl"
    journal = ReceiptJournal(path)
    assert journal.load() == 0
    assert journal.add(receipt("r1")) and journal.add(receipt("r2"))
    assert journal.add(receipt("r3", OTHER_COORDINATOR))
    assert not journal.add(receipt("r1"))  # held already: not written twice
    assert journal.ack(["r2", "unknown"]) == 1

    again = ReceiptJournal(path)
    assert again.load() == 2
    assert again.request_ids() == ["r1", "r3"]
    assert [r.request_id for r in again.pending(COORDINATOR.agent_id)] == ["r1"]
    assert again.pending(COORDINATOR.agent_id)[0] == receipt("r1")  # signatures intact
    assert again.ack(["r1", "r3"]) == 2
    assert ReceiptJournal(path).load() == 0


def test_a_corrupt_line_is_skipped_with_a_warning_and_the_rest_kept(tmp_path: Path, caplog):
    path = tmp_path / "receipts.jsonl"
    journal = ReceiptJournal(path)
    journal.add(receipt("r1"))
    with path.open("a") as fh:
        fh.write('{"add": {"body": "not a receipt"}}\n')
        fh.write("garbage that is not json\n")
    journal.add(receipt("r2"))
    with path.open("a") as fh:  # a crash tore the last write
        fh.write('{"add": {"body": {"request_id": "r3"')
    with caplog.at_level(logging.WARNING, logger="rigpool.agent.receipt_journal"):
        reloaded = ReceiptJournal(path)
        assert reloaded.load() == 2
    warnings = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert len(warnings) == 3, warnings
    assert reloaded.request_ids() == ["r1", "r2"]
    # the file was rewritten without them: appending after the torn line is safe
    assert all(json.loads(line) for line in path.read_text().splitlines())
    reloaded.add(receipt("r4"))
    assert ReceiptJournal(path).load() == 3


def test_a_full_journal_keeps_what_it_has_and_says_so_once(tmp_path: Path, caplog):
    journal = ReceiptJournal(tmp_path / "receipts.jsonl", max_receipts=2)
    with caplog.at_level(logging.ERROR, logger="rigpool.agent.receipt_journal"):
        assert journal.add(receipt("r1")) and journal.add(receipt("r2"))
        assert not journal.add(receipt("r3"))
        assert not journal.add(receipt("r4"))
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1 and "r3" in full[0].getMessage()
    journal.ack(["r1"])
    assert journal.add(receipt("r5"))
    assert ReceiptJournal(journal.path).load() == 2


def test_acknowledged_lines_are_compacted_away(tmp_path: Path, monkeypatch):
    import rigpool.agent.receipt_journal as module

    monkeypatch.setattr(module, "COMPACT_AFTER", 8)
    path = tmp_path / "receipts.jsonl"
    journal = ReceiptJournal(path)
    journal.add(receipt("keep"))
    for i in range(10):
        journal.add(receipt(f"r{i}"))
        journal.ack([f"r{i}"])
    lines = path.read_text().splitlines()
    assert len(lines) < 10  # rewritten: not 21 lines
    assert ReceiptJournal(path).load() == 1


def test_without_a_path_the_journal_lives_in_memory():
    journal = ReceiptJournal(None)
    assert journal.load() == 0
    assert journal.add(receipt("r1"))
    assert "r1" in journal and len(journal) == 1
    assert journal.ack(["r1"]) == 1 and len(journal) == 0
