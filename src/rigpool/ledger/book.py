"""The escrow hot path in bulk: holds, captures, releases, receipts and receipt recovery.

Each of these operations is an `EscrowOp`: validated when it is built (bad input raises at
once, before anything is queued), then applied by a `Book` together with the others of the same
database transaction. A `Book` works like this:

1. **read** in bulk what the batch refers to: the idempotency keys, the holds, the accounts
   and the receipts (three to four `SELECT ... IN (...)`, however many operations);
2. **apply** the operations one by one, in order, to that in-memory view. Each sees the effects
   of the ones before it (a replayed key, a hold already captured, a balance already spent). One
   that fails (overdraft, unknown hold, a conflicting key) raises its own `LedgerError` and
   leaves nothing behind: the others are unaffected;
3. **write** in bulk: new accounts and holds (`INSERT ... RETURNING id`), hold state changes, the
   journal rows (their ids read back by key), their postings, one balance update per account
   with the net change of the whole batch, and the receipts; rows without a `RETURNING` go
   straight to the driver's `executemany`. Then the database checks again that no balance went below
   zero, that every hold moved from `active` exactly once and that every key is new (a unique
   index); if another writer changed something since the read, that raises `StaleBook` and the
   caller retries (`Ledger` retries; `GroupCommit` re-runs the batch one unit at a time).

The rows written are exactly those of the one-transaction-per-operation code it replaces:
one journal transaction per operation, its postings merged per account, the same result and the
same request hash under the same idempotency key, so keys written by either path replay on the
other and the audit cannot tell them apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, ClassVar, Literal, Protocol, cast

from sqlalchemy import DateTime, Table, bindparam, insert, select, tuple_, update
from sqlalchemy.orm import Session

from rigpool.ledger.errors import (
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidReceipt,
    InvalidState,
    LedgerError,
    UnknownAccount,
)
from rigpool.ledger.pricing import network_fee
from rigpool.ledger.receipts import CheckedReceipt, SignedReceipt, check_receipt
from rigpool.ledger.tables import (
    NETWORK_OWNER,
    Account,
    AccountKind,
    Hold,
    JournalTx,
    Posting,
    Receipt,
)

K = AccountKind
MAX_AMOUNT = 2**62  # far above any supply; keeps every sum inside a signed 64-bit column
CHUNK = 400  # values per IN (...) list

ACCOUNTS = cast(Table, Account.__table__)
HOLDS = cast(Table, Hold.__table__)
JOURNAL = cast(Table, JournalTx.__table__)
POSTINGS = cast(Table, Posting.__table__)
RECEIPTS = cast(Table, Receipt.__table__)

#: what running one unit gave: (True, value) or (False, the exception it raised)
Outcome = tuple[bool, Any]

# Statements are built once: building one costs more than running it on SQLite.
_SELECT_ENTRIES = select(
    JOURNAL.c.idempotency_key,
    JOURNAL.c.kind,
    JOURNAL.c.request_hash,
    JOURNAL.c.result,
    JOURNAL.c.id,
).where(JOURNAL.c.idempotency_key.in_(bindparam("keys", expanding=True)))
_SELECT_ENTRY_IDS = select(JOURNAL.c.idempotency_key, JOURNAL.c.id).where(
    JOURNAL.c.idempotency_key.in_(bindparam("keys", expanding=True))
)
_SELECT_RECEIPTS = select(RECEIPTS.c.request_id, RECEIPTS.c.leaf).where(
    RECEIPTS.c.request_id.in_(bindparam("ids", expanding=True))
)
_SELECT_HOLDS = select(
    HOLDS.c.id, HOLDS.c.consumer, HOLDS.c.amount, HOLDS.c.state, HOLDS.c.captured, HOLDS.c.provider
).where(HOLDS.c.id.in_(bindparam("ids", expanding=True)))
_SELECT_ACCOUNTS = select(
    ACCOUNTS.c.id, ACCOUNTS.c.kind, ACCOUNTS.c.owner, ACCOUNTS.c.balance
).where(tuple_(ACCOUNTS.c.kind, ACCOUNTS.c.owner).in_(bindparam("pairs", expanding=True)))
# RETURNING with the row's natural key, not `sort_by_parameter_order`: on SQLite that would
# insert one row per statement. Holds have no key, but two holds of the same consumer and
# amount written by one batch are identical rows, so any pairing of them is the right one.
_INSERT_ACCOUNTS = insert(ACCOUNTS).returning(ACCOUNTS.c.id, ACCOUNTS.c.kind, ACCOUNTS.c.owner)
_INSERT_HOLDS = insert(HOLDS).returning(HOLDS.c.id, HOLDS.c.consumer, HOLDS.c.amount)


class _DriverMany:
    """A statement whose rows go straight to the driver's `executemany`.

    SQLAlchemy compiles it once per dialect (quoting, placeholders, PostgreSQL's casts), but
    does not process each row: most of the cost of writing a posting. So values must already
    be what the driver takes: `Book.write` renders datetimes with the dialect's own processor
    and JSON with `json.dumps`, exactly as the column types would.
    """

    def __init__(self, stmt: Any, keys: Sequence[str]) -> None:
        self.stmt, self.keys = stmt, list(keys)
        self._compiled: dict[str, tuple[str, list[str] | None, dict[str, Any]]] = {}

    def run(self, conn: Any, rows: list[dict[str, Any]]) -> Any:
        dialect = conn.dialect
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.stmt.compile(dialect=dialect, column_keys=self.keys)
            order = list(compiled.positiontup) if compiled.positional else None
            if order is not None and len(order) < 2:
                raise ValueError("itemgetter of one key gives a value, not a row")
            found = self._compiled[dialect.name] = (compiled.string, order, dict(compiled.params))
        sql, order, fixed = found
        if fixed:
            rows = [{**fixed, **row} for row in rows]
        params: list[Any] = rows if order is None else list(map(itemgetter(*order), rows))
        return conn.exec_driver_sql(sql, params)


_INSERT_JOURNAL = _DriverMany(
    insert(JOURNAL),
    ["idempotency_key", "kind", "request_hash", "memo", "reference", "result", "created"],
)
_INSERT_POSTINGS = _DriverMany(insert(POSTINGS), ["tx_id", "account_id", "amount"])
_INSERT_RECEIPTS = _DriverMany(
    insert(RECEIPTS),
    [
        "request_id",
        "provider",
        "consumer",
        "amount",
        "provider_amount",
        "leaf",
        "body",
        "epoch_id",
        "created",
    ],
)
_CLOSE_HOLDS = _DriverMany(
    update(HOLDS)
    .where(HOLDS.c.id == bindparam("hid"), HOLDS.c.state == "active")
    .values(
        state=bindparam("s_state"),
        captured=bindparam("s_captured"),
        provider=bindparam("s_provider"),
        closed=bindparam("s_closed"),
    ),
    ["hid", "s_state", "s_captured", "s_provider", "s_closed"],
)
_MOVE_BALANCES = _DriverMany(
    update(ACCOUNTS)
    .where(ACCOUNTS.c.id == bindparam("aid"))
    .values(balance=ACCOUNTS.c.balance + bindparam("delta")),
    ["aid", "delta"],
)
_DATETIME = DateTime()
_SELECT_OVERDRAWN = select(ACCOUNTS.c.id).where(
    ACCOUNTS.c.id.in_(bindparam("ids", expanding=True)), ACCOUNTS.c.balance < 0
)


class _ByList:
    """A `SELECT ... WHERE x IN (<list>)` whose list is one parameter, not one per value.

    SQLite reads a JSON array (`json_each`), PostgreSQL an array (`= ANY`, `unnest`): the SQL
    text is the same whatever the batch, so the driver's prepared statement is reused and
    nothing is rendered per value. Other databases get `fallback`, SQLAlchemy's expanding IN.
    """

    def __init__(self, sqlite: str, postgresql: str, fallback: Any, name: str) -> None:
        self.sqlite, self.postgresql, self.fallback, self.name = sqlite, postgresql, fallback, name

    def rows(self, conn: Any, values: Sequence[Any]) -> list[Any]:
        if not values:
            return []
        dialect = conn.dialect.name
        if dialect == "sqlite":
            return list(conn.exec_driver_sql(self.sqlite, (json.dumps(list(values)),)))
        if dialect == "postgresql":
            if values and isinstance(values[0], tuple):
                columns = list(zip(*values, strict=True))
                params = {f"v{i}": list(col) for i, col in enumerate(columns)}
            else:
                params = {"v0": list(values)}
            return list(conn.exec_driver_sql(self.postgresql, params))
        found: list[Any] = []
        for chunk in _chunks(values):
            found.extend(conn.execute(self.fallback, {self.name: chunk}))
        return found


_LOAD_ENTRIES = _ByList(
    "SELECT idempotency_key, kind, request_hash, result, id FROM ledger_journal_txs "
    "WHERE idempotency_key IN (SELECT value FROM json_each(?))",
    "SELECT idempotency_key, kind, request_hash, result, id FROM ledger_journal_txs "
    "WHERE idempotency_key = ANY(%(v0)s::varchar[])",
    _SELECT_ENTRIES,
    "keys",
)
_LOAD_ENTRY_IDS = _ByList(
    "SELECT idempotency_key, id FROM ledger_journal_txs "
    "WHERE idempotency_key IN (SELECT value FROM json_each(?))",
    "SELECT idempotency_key, id FROM ledger_journal_txs "
    "WHERE idempotency_key = ANY(%(v0)s::varchar[])",
    _SELECT_ENTRY_IDS,
    "keys",
)
_LOAD_RECEIPTS = _ByList(
    "SELECT request_id, leaf FROM ledger_receipts "
    "WHERE request_id IN (SELECT value FROM json_each(?))",
    "SELECT request_id, leaf FROM ledger_receipts WHERE request_id = ANY(%(v0)s::varchar[])",
    _SELECT_RECEIPTS,
    "ids",
)
_LOAD_HOLDS = _ByList(
    "SELECT id, consumer, amount, state, captured, provider FROM ledger_holds "
    "WHERE id IN (SELECT value FROM json_each(?))",
    "SELECT id, consumer, amount, state, captured, provider FROM ledger_holds "
    "WHERE id = ANY(%(v0)s::integer[])",
    _SELECT_HOLDS,
    "ids",
)
_LOAD_ACCOUNTS = _ByList(
    "SELECT id, kind, owner, balance FROM ledger_accounts WHERE (kind, owner) IN "
    "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))",
    "SELECT id, kind, owner, balance FROM ledger_accounts WHERE (kind, owner) IN "
    "(SELECT * FROM unnest(%(v0)s::varchar[], %(v1)s::varchar[]))",
    _SELECT_ACCOUNTS,
    "pairs",
)
_LOAD_OVERDRAWN = _ByList(
    "SELECT id FROM ledger_accounts WHERE balance < 0 AND id IN (SELECT value FROM json_each(?))",
    "SELECT id FROM ledger_accounts WHERE balance < 0 AND id = ANY(%(v0)s::integer[])",
    _SELECT_OVERDRAWN,
    "ids",
)


class StaleBook(Exception):
    """The database changed under the in-memory view (another writer); retry the batch."""


# ---------------------------------------------------------------- escrow keys


def hold_key(request_id: str) -> str:
    """The idempotency key of a request's hold (the gateway and recovery both use it)."""
    return f"{request_id}:hold"


def capture_key(request_id: str) -> str:
    """The key of a request's capture; a charge recovered from a receipt uses it too."""
    return f"{request_id}:capture"


def release_key(request_id: str) -> str:
    """The key of a request's release (a failed request costs nothing)."""
    return f"{request_id}:release"


# ------------------------------------------------------------------ checking


def check_amount(value: object, name: str = "amount", *, allow_zero: bool = False) -> int:
    """An amount is an `int` of base units, positive (or zero where allowed), never a float."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidAmount(f"{name} must be an integer number of base units, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or value >= MAX_AMOUNT:
        bound = "non-negative" if allow_zero else "positive"
        raise InvalidAmount(f"{name} must be {bound} and below 2**62, got {value}")
    return value


def check_owner(value: object, name: str = "owner") -> str:
    """An account owner: a non-empty id of at most 64 characters."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise LedgerError(f"{name} must be a non-empty id of at most 64 characters")
    return value


def check_key(key: object) -> str:
    """An idempotency key: a non-empty string of at most 200 characters."""
    if not isinstance(key, str) or not key or len(key) > 200:
        raise LedgerError("idempotency key must be a non-empty string of at most 200 chars")
    return key


def request_digest(kind: str, params: dict[str, Any]) -> str:
    """The hash stored with a key, so that a replay with other arguments is caught."""
    return hashlib.sha256(
        json.dumps({"kind": kind, **params}, sort_keys=True, default=str).encode()
    ).hexdigest()


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class Capture:
    """What `capture` did: `charged` = provider_amount + fee; `released` went back."""

    hold_id: int
    charged: int
    fee: int
    provider_amount: int
    released: int


RecoveryAction = Literal["captured", "charged", "already_captured", "free"]


@dataclass(frozen=True)
class Recovery:
    """What `recover_from_receipt` did for one countersigned receipt.

    `action`: "captured" (the hold was still active: captured now), "charged" (the hold had
    been released, e.g. by start-up recovery: the consumer's balance is charged instead),
    "already_captured" (the capture had reached the database: nothing moved) or "free" (a
    receipt for nothing: no money to move). `receipt_recorded` is False when the same receipt
    was already stored.
    """

    request_id: str
    action: RecoveryAction
    charged: int
    receipt_recorded: bool


# ----------------------------------------------------------- in-memory state


class _Account:
    __slots__ = ("balance", "id", "kind", "owner")

    def __init__(self, id: int | None, kind: str, owner: str, balance: int) -> None:
        self.id, self.kind, self.owner, self.balance = id, kind, owner, balance


class _Hold:
    __slots__ = ("amount", "captured", "closed", "consumer", "id", "provider", "state")

    def __init__(self, id: int | None, consumer: str, amount: int, state: str) -> None:
        self.id, self.consumer, self.amount, self.state = id, consumer, amount, state
        self.captured = 0
        self.provider: str | None = None
        self.closed: datetime | None = None


class _Entry:
    """A journal transaction: loaded (id set) or written by this batch."""

    __slots__ = ("digest", "hold", "id", "key", "kind", "legs", "reference", "result")

    def __init__(
        self,
        key: str,
        kind: str,
        digest: str,
        result: dict[str, Any],
        *,
        id: int | None = None,
        reference: str | None = None,
        legs: dict[_Account, int] | None = None,
        hold: _Hold | None = None,
    ) -> None:
        self.key, self.kind, self.digest, self.result = key, kind, digest, result
        self.id, self.reference, self.legs, self.hold = id, reference, legs or {}, hold


Legs = list[tuple[_Account, int]]


class Book:
    """The in-memory view of one database transaction's escrow operations (see module doc)."""

    def __init__(self, s: Session, now: datetime, *, check_rowcounts: bool = True) -> None:
        self.s = s
        self.now = now
        self.entries: dict[str, _Entry] = {}
        self.accounts: dict[tuple[str, str], _Account] = {}
        self.holds: dict[int, _Hold] = {}
        self.receipts: dict[str, str] = {}
        self.new_accounts: list[_Account] = []
        self.new_holds: list[_Hold] = []
        self.closed_holds: list[_Hold] = []
        self.new_entries: list[_Entry] = []
        self.new_receipts: list[CheckedReceipt] = []
        self.deltas: dict[_Account, int] = {}
        self.check_rowcounts = check_rowcounts

    # ------------------------------------------------------------------ read

    def load(self, ops: Sequence[EscrowOp]) -> None:
        """Read everything the operations refer to, in a few bulk queries."""
        conn = self.s.connection()
        keys = sorted({k for op in ops for k in op.idempotency_keys()})
        for key, kind, digest, result, tx_id in _LOAD_ENTRIES.rows(conn, keys):
            if isinstance(result, str):  # SQLite hands JSON back as text
                result = json.loads(result)
            self.entries[key] = _Entry(key, kind, digest, dict(result or {}), id=tx_id)
        request_ids = sorted({r for op in ops for r in op.receipt_ids()})
        for rid, leaf in _LOAD_RECEIPTS.rows(conn, request_ids):
            self.receipts[rid] = leaf
        hold_ids = sorted({h for op in ops for h in op.hold_ids(self)})
        for hid, consumer, amount, state, captured, provider in _LOAD_HOLDS.rows(conn, hold_ids):
            hold = _Hold(hid, consumer, int(amount), state)
            hold.captured, hold.provider = int(captured or 0), provider
            self.holds[hid] = hold
        pairs = sorted({p for op in ops for p in op.account_pairs(self)})
        for aid, kind, owner, balance in _LOAD_ACCOUNTS.rows(conn, pairs):
            self.accounts[(kind, owner)] = _Account(aid, kind, owner, int(balance))

    # ----------------------------------------------------------------- apply

    def replay(self, key: str, kind: str, digest: str) -> _Entry | None:
        """The entry already written under `key`, or None; a different movement conflicts."""
        old = self.entries.get(key)
        if old is not None and old.digest != digest:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was used for a different {old.kind}"
            )
        return old

    def account(self, kind: str, owner: str, *, create: bool, new: dict[Any, _Account]) -> _Account:
        """An account of the view; `create` makes it (kept only if the operation succeeds)."""
        acc = self.accounts.get((kind, owner)) or new.get((kind, owner))
        if acc is None:
            if not create:
                raise UnknownAccount(f"no {kind} account for {owner!r}")
            acc = new[(kind, owner)] = _Account(None, kind, owner, 0)
        return acc

    def hold(self, hold_id: int) -> _Hold:
        hold = self.holds.get(hold_id)
        if hold is None:
            raise UnknownAccount(f"no hold {hold_id}")
        return hold

    def post(
        self,
        key: str,
        kind: str,
        digest: str,
        legs: Legs,
        new: dict[Any, _Account],
        result: dict[str, Any],
        *,
        reference: str | None = None,
        hold: _Hold | None = None,
    ) -> _Entry:
        """Check the legs (balanced, no overdraft), then make the movement part of the view."""
        merged: dict[_Account, int] = {}
        for acc, amount in legs:
            merged[acc] = merged.get(acc, 0) + amount
        if sum(merged.values()) != 0:
            raise AssertionError(f"unbalanced journal tx: legs sum to {sum(merged.values())}")
        for acc, amount in merged.items():
            if amount < 0 and acc.kind != K.EXTERNAL and acc.balance + amount < 0:
                raise InsufficientFunds(
                    f"{acc.kind} account of {acc.owner} holds {acc.balance}, cannot take {-amount}"
                )
        # Nothing can fail from here on: the movement becomes part of the view.
        for (kind_, owner), acc in new.items():
            self.accounts[(kind_, owner)] = acc
            self.new_accounts.append(acc)
        legs_nz = {acc: amount for acc, amount in merged.items() if amount}
        for acc, amount in legs_nz.items():
            acc.balance += amount
            self.deltas[acc] = self.deltas.get(acc, 0) + amount
        entry = _Entry(key, kind, digest, result, reference=reference, legs=legs_nz, hold=hold)
        self.entries[key] = entry
        self.new_entries.append(entry)
        return entry

    def record(self, checked: CheckedReceipt) -> bool:
        """Stage a receipt; False when the same one is stored, an error when another is."""
        rid = checked.receipt.body.request_id
        known = self.receipts.get(rid)
        if known is not None:
            if known != checked.leaf:
                raise InvalidReceipt(f"another receipt for request {rid} is recorded")
            return False
        self.receipts[rid] = checked.leaf
        self.new_receipts.append(checked)
        return True

    def close_hold(self, hold: _Hold, state: str, captured: int, provider: str | None) -> None:
        hold.state, hold.captured, hold.provider, hold.closed = state, captured, provider, self.now
        self.closed_holds.append(hold)

    # ----------------------------------------------------------------- write

    def write(self, checkpoint: Callable[[], None] = lambda: None) -> None:
        """Write the batch in bulk; `StaleBook` when the database disagrees with the view.

        `checkpoint` is called between two writes (crash tests inject a fault there).
        """
        conn = self.s.connection()
        now = self.now
        if self.new_accounts:
            rows = conn.execute(
                _INSERT_ACCOUNTS,
                [
                    {"kind": a.kind, "owner": a.owner, "balance": 0, "created": now}
                    for a in self.new_accounts
                ],
            )
            created = {(kind, owner): aid for aid, kind, owner in _rows(rows)}
            for acc in self.new_accounts:
                acc.id = created[(acc.kind, acc.owner)]
        if self.new_holds:
            rows = conn.execute(
                _INSERT_HOLDS,
                [
                    {
                        "consumer": h.consumer,
                        "amount": h.amount,
                        "state": "active",
                        "captured": 0,
                        "provider": None,
                        "created": now,
                        "closed": None,
                    }
                    for h in self.new_holds
                ],
            )
            same: dict[tuple[str, int], list[int]] = {}
            for hid, consumer, amount in _rows(rows):
                same.setdefault((consumer, int(amount)), []).append(hid)
            for hold in self.new_holds:
                hold.id = same[(hold.consumer, hold.amount)].pop()
        checkpoint()
        if self.closed_holds:
            closed = _driver_datetime(conn, now)
            moved = _CLOSE_HOLDS.run(
                conn,
                [
                    {
                        "hid": h.id,
                        "s_state": h.state,
                        "s_captured": h.captured,
                        "s_provider": h.provider,
                        "s_closed": closed,
                    }
                    for h in self.closed_holds
                ],
            )
            if self.check_rowcounts and moved.rowcount != len(self.closed_holds):
                raise StaleBook("a hold was closed by another writer")
        for entry in self.new_entries:
            if entry.kind == "hold" and entry.hold is not None:
                entry.result["hold_id"] = entry.hold.id
        if self.new_entries:
            created = _driver_datetime(conn, now)
            _INSERT_JOURNAL.run(
                conn,
                [
                    {
                        "idempotency_key": e.key,
                        "kind": e.kind,
                        "request_hash": e.digest,
                        "memo": "",
                        "reference": e.reference,
                        "result": json.dumps(e.result),
                        "created": created,
                    }
                    for e in self.new_entries
                ],
            )
            # The keys are unique, so reading them back names each new row's id.
            found = _LOAD_ENTRY_IDS.rows(conn, [e.key for e in self.new_entries])
            tx_ids: dict[str, int] = {key: tx_id for key, tx_id in found}
            for entry in self.new_entries:
                entry.id = tx_ids[entry.key]
            postings = [
                {"tx_id": e.id, "account_id": acc.id, "amount": amount}
                for e in self.new_entries
                for acc, amount in e.legs.items()
            ]
            if postings:
                _INSERT_POSTINGS.run(conn, postings)
        checkpoint()
        moves = [(acc, d) for acc, d in self.deltas.items() if d]
        if moves:
            # The balance changes only by a delta, so a stale read cannot overwrite another
            # writer's change; the check below then refuses any overdraft it would have hidden.
            _MOVE_BALANCES.run(conn, [{"aid": acc.id, "delta": d} for acc, d in moves])
            debited = [acc.id for acc, d in moves if d < 0 and acc.kind != K.EXTERNAL]
            short = _LOAD_OVERDRAWN.rows(conn, debited)
            if short:
                raise StaleBook(f"account {short[0][0]} would go below zero")
        if self.new_receipts:
            created = _driver_datetime(conn, now)
            _INSERT_RECEIPTS.run(
                conn,
                [
                    {
                        "request_id": c.receipt.body.request_id,
                        "provider": c.receipt.body.provider,
                        "consumer": c.receipt.body.consumer,
                        "amount": c.receipt.body.amount,
                        "provider_amount": c.receipt.body.provider_amount,
                        "leaf": c.leaf,
                        "body": c.payload_json or json.dumps(c.payload),
                        "epoch_id": None,
                        "created": created,
                    }
                    for c in self.new_receipts
                ],
            )


def _driver_datetime(conn: Any, value: datetime) -> Any:
    """`value` as the DateTime column would hand it to this driver (SQLite: a string)."""
    process = _DATETIME.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return process(value) if process is not None else value


def _rows(result: Any) -> list[Any]:
    """A result's rows, typed loosely (the tables are plain `Table`s here)."""
    return list(result)


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for i in range(0, len(values), CHUNK):
        yield values[i : i + CHUNK]


# -------------------------------------------------------------- operations


class Batcher(Protocol):
    """Runs consecutive units of one kind together (what `GroupCommit` looks for)."""

    def run_batch(self, s: Session, units: Sequence[Any]) -> list[Outcome]:
        """Apply `units` in order inside `s`'s transaction; one outcome per unit.

        A unit's own failure is its outcome; an exception out of `run_batch` means the whole
        batch could not be written (the caller rolls back and retries unit by unit).
        """
        ...


class EscrowOp:
    """One validated escrow movement; also a unit of work: `op(session)` runs it alone.

    Build them with `Ledger.hold_op`, `capture_op`, `release_op`, `receipt_op` and
    `recovery_op`. Calling one inside an open transaction applies it there (used by the
    one-transaction `Ledger` methods and by `GroupCommit`'s unit-by-unit retry);
    `GroupCommit` finds `batcher` and applies consecutive operations as one `Book`.
    """

    kind: ClassVar[str]
    batcher: Batcher

    def __call__(self, s: Session) -> Any:
        ok, value = self.batcher.run_batch(s, [self])[0]
        if not ok:
            raise value
        return value

    def idempotency_keys(self) -> Iterable[str]:
        return ()

    def receipt_ids(self) -> Iterable[str]:
        return ()

    def hold_ids(self, book: Book) -> Iterable[int]:
        return ()

    def account_pairs(self, book: Book) -> Iterable[tuple[str, str]]:
        return ()

    def apply(self, book: Book) -> Callable[[], Any]:
        """Apply to the view; returns how to read the result once the batch is written."""
        raise NotImplementedError


class HoldOp(EscrowOp):
    """Reserve `amount` of the consumer's balance for one request; the result is the hold id."""

    kind = "hold"

    def __init__(self, batcher: Batcher, consumer: str, amount: int, key: str) -> None:
        self.batcher = batcher
        self.consumer = check_owner(consumer, "consumer")
        self.amount = check_amount(amount)
        self.key = check_key(key)
        self.digest = request_digest("hold", {"consumer": consumer, "amount": amount})

    def idempotency_keys(self) -> Iterable[str]:
        return (self.key,)

    def account_pairs(self, book: Book) -> Iterable[tuple[str, str]]:
        return ((K.CONSUMER, self.consumer), (K.CONSUMER_HOLD, self.consumer))

    def apply(self, book: Book) -> Callable[[], Any]:
        entry = book.replay(self.key, self.kind, self.digest)
        if entry is None:
            new: dict[Any, _Account] = {}
            src = book.account(K.CONSUMER, self.consumer, create=False, new=new)
            dst = book.account(K.CONSUMER_HOLD, self.consumer, create=True, new=new)
            hold = _Hold(None, self.consumer, self.amount, "active")
            legs = [(src, -self.amount), (dst, self.amount)]
            entry = book.post(self.key, self.kind, self.digest, legs, new, {}, hold=hold)
            book.new_holds.append(hold)
        done = entry
        return lambda: int(done.result["hold_id"])


class _HoldKeyOp(EscrowOp):
    """An operation on one existing hold under one idempotency key (capture, release)."""

    hold_id: int
    key: str

    def idempotency_keys(self) -> Iterable[str]:
        return (self.key,)

    def hold_ids(self, book: Book) -> Iterable[int]:
        return (self.hold_id,)


class CaptureOp(_HoldKeyOp):
    """Charge a finished request (capped at its hold), release the rest of the hold.

    With `fee` given (recovery from a receipt) the fee is that amount instead of
    `network_fee(charge, fee_bps)`.
    """

    kind = "capture"

    def __init__(
        self,
        batcher: Batcher,
        hold_id: int,
        amount: int,
        provider: str,
        fee_bps: int,
        key: str,
    ) -> None:
        self.batcher = batcher
        self.amount = check_amount(amount, allow_zero=True)
        self.provider = check_owner(provider, "provider")
        network_fee(0, fee_bps)  # validates fee_bps
        self.hold_id, self.fee_bps, self.key = hold_id, fee_bps, check_key(key)
        self.digest = request_digest(
            "capture",
            {"hold_id": hold_id, "amount": amount, "provider": provider, "fee_bps": fee_bps},
        )

    def account_pairs(self, book: Book) -> Iterable[tuple[str, str]]:
        hold = book.holds.get(self.hold_id)
        if hold is None:
            return ()
        return (
            (K.CONSUMER_HOLD, hold.consumer),
            (K.CONSUMER, hold.consumer),
            (K.PROVIDER_EARNINGS, self.provider),
            (K.TREASURY, NETWORK_OWNER),
        )

    def apply(self, book: Book) -> Callable[[], Any]:
        entry = book.replay(self.key, self.kind, self.digest)
        if entry is None:
            hold = book.hold(self.hold_id)
            charged = min(self.amount, hold.amount)
            fee = network_fee(charged, self.fee_bps)
            entry = capture_hold(book, hold, charged, fee, self.provider, self.key, self.digest)
        done = entry
        return lambda: Capture(**done.result)


def capture_hold(
    book: Book, hold: _Hold, charged: int, fee: int, provider: str, key: str, digest: str
) -> _Entry:
    """Capture an active hold in the view: charge, fee and provider's part; release the rest."""
    if hold.state != "active":
        raise InvalidState(f"hold {hold.id} is already {hold.state}")
    new: dict[Any, _Account] = {}
    legs: Legs = [
        (book.account(K.CONSUMER_HOLD, hold.consumer, create=False, new=new), -hold.amount),
        (book.account(K.CONSUMER, hold.consumer, create=True, new=new), hold.amount - charged),
    ]
    if charged - fee:
        legs.append(
            (book.account(K.PROVIDER_EARNINGS, provider, create=True, new=new), charged - fee)
        )
    if fee:
        legs.append((book.account(K.TREASURY, NETWORK_OWNER, create=True, new=new), fee))
    result = {
        "hold_id": hold.id,
        "charged": charged,
        "fee": fee,
        "provider_amount": charged - fee,
        "released": hold.amount - charged,
    }
    entry = book.post(key, "capture", digest, legs, new, result, reference=str(hold.id))
    book.close_hold(hold, "captured", charged, provider)
    return entry


class ReleaseOp(_HoldKeyOp):
    """Give a hold back in full; the result is the amount released."""

    kind = "release"

    def __init__(self, batcher: Batcher, hold_id: int, key: str | None = None) -> None:
        self.batcher = batcher
        self.hold_id = hold_id
        self.key = check_key(key or f"release:{hold_id}")
        self.digest = request_digest("release", {"hold_id": hold_id})

    def account_pairs(self, book: Book) -> Iterable[tuple[str, str]]:
        hold = book.holds.get(self.hold_id)
        if hold is None:
            return ()
        return ((K.CONSUMER_HOLD, hold.consumer), (K.CONSUMER, hold.consumer))

    def apply(self, book: Book) -> Callable[[], Any]:
        entry = book.replay(self.key, self.kind, self.digest)
        if entry is None:
            hold = book.hold(self.hold_id)
            if hold.state != "active":
                raise InvalidState(f"hold {self.hold_id} is already {hold.state}")
            new: dict[Any, _Account] = {}
            legs: Legs = [
                (book.account(K.CONSUMER_HOLD, hold.consumer, create=False, new=new), -hold.amount),
                (book.account(K.CONSUMER, hold.consumer, create=False, new=new), hold.amount),
            ]
            entry = book.post(
                self.key, self.kind, self.digest, legs, new, {"released": hold.amount}
            )
            book.close_hold(hold, "released", 0, None)
        done = entry
        return lambda: int(done.result["released"])


class ReceiptOp(EscrowOp):
    """Store one countersigned receipt; True when new, False when the same one is stored."""

    kind = "receipt"

    def __init__(self, batcher: Batcher, checked: CheckedReceipt) -> None:
        self.batcher = batcher
        self.checked = checked

    def receipt_ids(self) -> Iterable[str]:
        return (self.checked.receipt.body.request_id,)

    def apply(self, book: Book) -> Callable[[], Any]:
        new = book.record(self.checked)
        return lambda: new


class RecoveryOp(EscrowOp):
    """Make the ledger agree with a countersigned receipt the agent presents (see Ledger)."""

    kind = "recovery"

    def __init__(
        self,
        batcher: Batcher,
        receipt: SignedReceipt,
        coordinator: str,
        fee_bps: int | None = None,
    ) -> None:
        self.batcher = batcher
        self.fee_bps = fee_bps
        body = receipt.body
        if body.coordinator != coordinator:
            raise InvalidReceipt(
                f"receipt {body.request_id} was countersigned by {body.coordinator}, "
                "not by this coordinator"
            )
        self.checked = check_receipt(receipt)
        self.body = body
        self.hold_key = hold_key(body.request_id)
        self.capture_key = capture_key(body.request_id)

    def idempotency_keys(self) -> Iterable[str]:
        return (self.hold_key, self.capture_key)

    def receipt_ids(self) -> Iterable[str]:
        return (self.body.request_id,)

    def _hold_id(self, book: Book) -> int | None:
        entry = book.entries.get(self.hold_key)
        if entry is None or entry.kind != "hold" or "hold_id" not in entry.result:
            return None
        return int(entry.result["hold_id"])

    def hold_ids(self, book: Book) -> Iterable[int]:
        hid = self._hold_id(book)
        return () if hid is None else (hid,)

    def account_pairs(self, book: Book) -> Iterable[tuple[str, str]]:
        b = self.body
        return (
            (K.CONSUMER, b.consumer),
            (K.CONSUMER_HOLD, b.consumer),
            (K.PROVIDER_EARNINGS, b.provider),
            (K.TREASURY, NETWORK_OWNER),
        )

    def apply(self, book: Book) -> Callable[[], Any]:
        b = self.body
        rid = b.request_id
        known = book.receipts.get(rid)
        if known is not None and known != self.checked.leaf:
            raise InvalidReceipt(f"another receipt for request {rid} is recorded")
        action: RecoveryAction
        done = book.entries.get(self.capture_key)
        hid = self._hold_id(book)
        hold = book.holds.get(hid) if hid is not None else None
        if done is not None:
            charged = int(done.result.get("charged", -1))
            if charged != b.amount:
                raise InvalidReceipt(
                    f"the ledger charged {charged} for request {rid}, its receipt says {b.amount}"
                )
            action = "already_captured"
        elif b.amount == 0:
            action, charged = "free", 0
        elif hold is None:
            raise InvalidReceipt(
                f"no hold for request {rid}: a request whose hold never reached the ledger "
                "was never served"
            )
        else:
            if hold.consumer != b.consumer:
                raise InvalidReceipt(f"receipt {rid} names another consumer than its hold")
            if b.amount > hold.amount:
                raise InvalidReceipt(
                    f"receipt {rid} charges {b.amount}, above its hold of {hold.amount}"
                )
            params = {
                "hold_id": hold.id,
                "amount": b.amount,
                "provider": b.provider,
                "fee": b.fee,
            }
            if hold.state == "active":
                if self.fee_bps is not None and network_fee(b.amount, self.fee_bps) == b.fee:
                    # exactly the gateway's own capture: a late one replays instead of conflicting
                    params = {**params, "fee_bps": self.fee_bps}
                    del params["fee"]
                digest = request_digest("capture", params)
                capture_hold(book, hold, b.amount, b.fee, b.provider, self.capture_key, digest)
                action, charged = "captured", b.amount
            elif hold.state == "released":
                self._charge(book, params)
                action, charged = "charged", b.amount
            else:  # captured under another key: the money moved once already
                if hold.captured != b.amount:
                    raise InvalidReceipt(
                        f"hold of request {rid} captured {hold.captured}, receipt says {b.amount}"
                    )
                action, charged = "already_captured", b.amount
        recorded = book.record(self.checked)
        return lambda: Recovery(rid, action, charged, recorded)

    def _charge(self, book: Book, params: dict[str, Any]) -> None:
        """The hold was released: take the receipt's amount from the consumer's balance."""
        b = self.body
        new: dict[Any, _Account] = {}
        legs: Legs = [(book.account(K.CONSUMER, b.consumer, create=False, new=new), -b.amount)]
        if b.provider_amount:
            earn = book.account(K.PROVIDER_EARNINGS, b.provider, create=True, new=new)
            legs.append((earn, b.provider_amount))
        if b.fee:
            legs.append((book.account(K.TREASURY, NETWORK_OWNER, create=True, new=new), b.fee))
        result = {"charged": b.amount, "fee": b.fee, "provider_amount": b.provider_amount}
        digest = request_digest("receipt_charge", params)
        book.post(
            self.capture_key, "receipt_charge", digest, legs, new, result, reference=b.request_id
        )


def apply_all(book: Book, ops: Sequence[EscrowOp]) -> list[tuple[bool, Any]]:
    """Apply each operation to the view; (True, result reader) or (False, its exception)."""
    applied: list[tuple[bool, Any]] = []
    for op in ops:
        try:
            applied.append((True, op.apply(book)))
        except LedgerError as exc:
            applied.append((False, exc))
    return applied
