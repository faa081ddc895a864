"""Escrow for each request: hold the worst case at admission, capture the actual cost, release.

The payment token has 6 decimals and is priced in USD (a stablecoin), so a price of
$0.10 per million tokens is 100,000 base units per million. The hold is the worst case at the
highest price any eligible provider asks (the provider is chosen later, by the router); the
capture is the chosen provider's price times the gateway's own token count, never the agent's.
A request that fails costs nothing: its hold is released. After a mid-stream failover the whole
capture goes to the provider that finished the stream: the one that failed forfeits its part.

## Contract for the request path (group-committed money)

`Billing` has two faces over the same ledger and the same idempotency keys (`<request_id>:hold`,
`:capture`, `:release`), so they can be mixed and a retry on either replays the other's result:

- **synchronous** `hold`, `capture`, `release`: one database transaction each; call them from
  async code through `asyncio.to_thread` (what the gateway did so far);
- **group-committed**, through one writer thread shared by every request (`EscrowWriter`: many
  operations per transaction, one commit per batch; a lone request is committed at once):

  `await billing.hold_async(consumer, request_id, price, prompt, max_tokens) -> Hold | None`
      Resolves only once the hold is **committed**: dispatch no token before it returns. None
      when the request is free. Raises `InsufficientBalance` (HTTP 429) when the balance does
      not cover the worst case; `LedgerError` for bad input. Must be called on the event loop.

  `billing.settle(hold, request_id, price, prompt, completion, provider) -> Settlement`
      Never blocks and never raises for money reasons. `Settlement.capture` is what is charged
      (computed at once: charge = min(hold, price.cost(prompt, completion)), fee, provider's
      part, released), so the receipt can be built before the capture is durable.
      `provider=None`, or a cost of 0, releases the hold instead (charged 0).
      `Settlement.durable` (a `concurrent.futures.Future[Capture]`) resolves once the capture
      (or release) is committed; the gateway need not wait for it. A failure is logged; the
      ledger stays balanced and the hold stays active (start-up recovery releases it, and the
      agent's receipt then charges it; see docs/money.md "What is durable when").

  `billing.record_receipt_later(signed) -> Future[bool]`
      Checks both signatures on a checker thread, then stores the receipt group-committed.
      True when new, False when the same receipt was stored; `InvalidReceipt` otherwise. A
      failure is logged. `await billing.record_receipt_async(signed)` is the awaitable form.
      A `CheckedReceipt` (what `countersign_checked` returns for a receipt the coordinator
      has just countersigned: the agent's signature checked there, the coordinator's its own)
      is stored without a second check and without the checker hop; a `SignedReceipt` from
      anywhere else is always checked in full.

  `billing.recover_receipt(signed, coordinator) -> Future[Recovery]`
      For an agent presenting, on reconnect, a countersigned receipt the coordinator may lack:
      `Ledger.recover_from_receipt` (idempotent: captures the hold, or charges the consumer
      if start-up recovery released it, or does nothing if the capture is there).

  `billing.submit(unit) -> Future[T]`
      Any other unit of work (a callable taking a SQLAlchemy `Session`), e.g. the request's
      final row, committed in the same batches. `await billing.run(unit)` awaits it.

  `billing.close()`
      Commit what is queued and stop the writer (call at shutdown; idempotent). Without it, a
      process exit loses what was queued and not committed, exactly as a crash would.

The writer starts on the first group-committed call, so code that only uses the synchronous
methods starts no thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from rigpool.core.errors import RigpoolError
from rigpool.ledger import Capture, Ledger, Price, SignedReceipt
from rigpool.ledger.book import Recovery, capture_key, hold_key, release_key
from rigpool.ledger.errors import InsufficientFunds, UnknownAccount
from rigpool.ledger.pricing import network_fee
from rigpool.ledger.receipts import CheckedReceipt
from rigpool.ledger.writer import EscrowWriter

log = logging.getLogger(__name__)

BASE_UNITS_PER_USD = 1_000_000
T = TypeVar("T")


class InsufficientBalance(RigpoolError):
    """OpenAI answers an exhausted balance with 429 `insufficient_quota`; so do we."""

    status_code = 429
    error_type = "insufficient_quota"
    code = "insufficient_quota"


def units(usd_per_mtok: float) -> int:
    return round(usd_per_mtok * BASE_UNITS_PER_USD)


@dataclass(frozen=True)
class Hold:
    hold_id: int
    amount: int


@dataclass(frozen=True)
class Settlement:
    """What `settle` charges (known at once) and when it is durable (`durable` resolves)."""

    capture: Capture
    durable: Future[Capture]


class Billing:
    """Escrow per request: synchronous methods, and group-committed ones (see module doc)."""

    def __init__(
        self,
        ledger: Ledger,
        fee_bps: int,
        *,
        writer: Callable[[Ledger], EscrowWriter] = EscrowWriter,
    ):
        self.ledger = ledger
        self.fee_bps = fee_bps
        self._make_writer = writer
        self._writer: EscrowWriter | None = None
        self._writer_lock = threading.Lock()

    # ------------------------------------------------------------ synchronous

    def hold(
        self, consumer: str, request_id: str, price: Price, prompt: int, max_tokens: int
    ) -> Hold | None:
        """Reserve the worst case; None when it is free (every eligible provider asks 0)."""
        amount = price.worst_case(prompt, max_tokens)
        if amount == 0:
            return None
        try:
            hold_id = self.ledger.hold(consumer, amount, key=hold_key(request_id))
        except (InsufficientFunds, UnknownAccount):
            raise self._refusal(consumer, amount, prompt, max_tokens) from None
        return Hold(hold_id, amount)

    def capture(
        self, hold: Hold, request_id: str, price: Price, prompt: int, completion: int, provider: str
    ) -> Capture:
        cost = min(hold.amount, price.cost(prompt, completion))
        if cost == 0:
            self.ledger.release(hold.hold_id, key=release_key(request_id))
            return Capture(hold.hold_id, charged=0, fee=0, provider_amount=0, released=hold.amount)
        return self.ledger.capture(
            hold.hold_id, cost, provider, self.fee_bps, key=capture_key(request_id)
        )

    def release(self, hold: Hold, request_id: str) -> None:
        self.ledger.release(hold.hold_id, key=release_key(request_id))

    def _refusal(
        self, consumer: str, amount: int, prompt: int, max_tokens: int
    ) -> InsufficientBalance:
        # A consumer who never deposited has no account yet: the same answer, balance 0.
        balance = self.ledger.balance("consumer", consumer)
        return InsufficientBalance(
            f"Your balance ({balance / BASE_UNITS_PER_USD:.6f} USD) does not cover this "
            f"request's worst case ({amount / BASE_UNITS_PER_USD:.6f} USD: "
            f"{prompt} prompt + {max_tokens} max tokens); deposit funds or lower max_tokens."
        )

    # -------------------------------------------------------- group-committed

    @property
    def writer(self) -> EscrowWriter:
        """The shared group-commit writer (started on first use)."""
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    self._writer = self._make_writer(self.ledger)
        return self._writer

    async def hold_async(
        self, consumer: str, request_id: str, price: Price, prompt: int, max_tokens: int
    ) -> Hold | None:
        """`hold`, group-committed; returns once the hold is durable (see module doc)."""
        amount = price.worst_case(prompt, max_tokens)
        if amount == 0:
            return None
        try:
            hold_id = await self.writer.hold_async(consumer, amount, hold_key(request_id))
        except (InsufficientFunds, UnknownAccount):
            refusal = await asyncio.to_thread(self._refusal, consumer, amount, prompt, max_tokens)
            raise refusal from None
        return Hold(hold_id, amount)

    def settle(
        self,
        hold: Hold,
        request_id: str,
        price: Price,
        prompt: int,
        completion: int,
        provider: str | None,
    ) -> Settlement:
        """Capture the cost (or release the hold), group-committed; never blocks."""
        cost = min(hold.amount, price.cost(prompt, completion)) if provider is not None else 0
        if cost == 0 or provider is None:
            planned = Capture(
                hold.hold_id, charged=0, fee=0, provider_amount=0, released=hold.amount
            )
            done = self.writer.release(hold.hold_id, release_key(request_id))
            durable: Future[Capture] = Future()
            done.add_done_callback(lambda f: _copy(f, durable, planned))
        else:
            fee = network_fee(cost, self.fee_bps)
            planned = Capture(hold.hold_id, cost, fee, cost - fee, hold.amount - cost)
            durable = self.writer.capture(
                hold.hold_id, cost, provider, self.fee_bps, capture_key(request_id)
            )
        durable.add_done_callback(lambda f: _log_failure(f, "settle", request_id))
        return Settlement(planned, durable)

    def record_receipt_later(self, signed: SignedReceipt | CheckedReceipt) -> Future[bool]:
        """Store a receipt group-committed; a `SignedReceipt`'s signatures checked off the loop.

        A `CheckedReceipt` (from `countersign_checked`) is not checked again (see module doc).
        """
        if isinstance(signed, CheckedReceipt):
            request_id = signed.receipt.body.request_id
            done = self.writer.record_checked(signed)
        else:
            request_id = signed.body.request_id
            done = self.writer.record_receipt(signed)
        done.add_done_callback(lambda f: _log_failure(f, "receipt", request_id))
        return done

    async def record_receipt_async(self, signed: SignedReceipt | CheckedReceipt) -> bool:
        """`record_receipt_later`, awaited: True once a new receipt is durable."""
        if isinstance(signed, CheckedReceipt):
            try:
                return await self.writer.record_checked_async(signed)
            except Exception as exc:
                log.warning("receipt of %s not committed: %s", signed.receipt.body.request_id, exc)
                raise
        return await asyncio.wrap_future(self.record_receipt_later(signed))

    def recover_receipt(self, signed: SignedReceipt, coordinator: str) -> Future[Recovery]:
        """An agent's receipt the ledger may lack: capture or charge it, idempotently."""
        return self.writer.recover_from_receipt(
            signed, coordinator=coordinator, fee_bps=self.fee_bps
        )

    def submit(self, unit: Callable[[Any], T]) -> Future[T]:
        """Any unit of work (a callable taking a Session), committed with the escrow batches."""
        return self.writer.submit(unit)

    async def run(self, unit: Callable[[Any], T]) -> T:
        """`submit`, awaited: returns once the unit is committed."""
        return await self.writer.group.run(unit)

    def close(self) -> None:
        """Commit what is queued and stop the writer (idempotent)."""
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()


def _copy(source: Future[Any], target: Future[Capture], value: Capture) -> None:
    exc = source.exception() if not source.cancelled() else RuntimeError("cancelled")
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(value)


def _log_failure(done: Future[Any], what: str, request_id: str) -> None:
    exc = done.exception() if not done.cancelled() else None
    if exc is not None:
        log.warning("%s of %s not committed: %s", what, request_id, exc)
