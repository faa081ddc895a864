"""GroupCommit hands each batcher all its units of a batch at once, even when interleaved."""

from __future__ import annotations

import threading

from rigpool.coordinator.db import open_database
from rigpool.ledger.group_commit import GroupCommit


class Recorder:
    """A batcher that records the runs it is given."""

    def __init__(self, name: str, log: list[tuple[str, list[int]]]) -> None:
        self.name, self.log = name, log

    def run_batch(self, _session, units):
        self.log.append((self.name, [u.n for u in units]))
        return [(True, u.n) for u in units]


class Unit:
    def __init__(self, batcher: Recorder | None, n: int, log: list[tuple[str, list[int]]]) -> None:
        self.n, self.log = n, log
        if batcher is not None:
            self.batcher = batcher

    def __call__(self, _session):
        self.log.append(("plain", [self.n]))
        return self.n


def test_interleaved_batchers_get_one_run_each_and_plain_units_keep_their_place(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'g.db'}")
    log: list[tuple[str, list[int]]] = []
    a, b = Recorder("a", log), Recorder("b", log)
    gate = threading.Event()
    with GroupCommit(db) as group:
        blocker = group.submit(lambda _s: gate.wait(5))  # holds the writer: the rest queue up
        kinds = [a, b, a, b, None, b, a]
        futures = [group.submit(Unit(k, n, log)) for n, k in enumerate(kinds)]
        gate.set()
        assert blocker.result(5)
        assert [f.result(5) for f in futures] == list(range(len(kinds)))
    assert log == [("a", [0, 2]), ("b", [1, 3]), ("plain", [4]), ("b", [5]), ("a", [6])]
    db.kw["bind"].dispose()
