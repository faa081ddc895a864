"""Escrow for each request: hold the worst case at admission, capture the actual cost, release.

The payment token has 6 decimals and is priced in USD (a stablecoin), so a price of
$0.10 per million tokens is 100,000 base units per million. The hold is the worst case at the
highest price any eligible provider asks (the provider is chosen later, by the router); the
capture is the chosen provider's price times the gateway's own token count, never the agent's.
A request that fails costs nothing: its hold is released. After a mid-stream failover the whole
capture goes to the provider that finished the stream: the one that failed forfeits its part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rigpool.core.errors import RigpoolError
from rigpool.ledger import Capture, Ledger, Price
from rigpool.ledger.errors import InsufficientFunds, UnknownAccount

log = logging.getLogger(__name__)

BASE_UNITS_PER_USD = 1_000_000


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


class Billing:
    """Thin, synchronous (call through asyncio.to_thread): every call is one DB transaction."""

    def __init__(self, ledger: Ledger, fee_bps: int):
        self.ledger = ledger
        self.fee_bps = fee_bps

    def hold(
        self, consumer: str, request_id: str, price: Price, prompt: int, max_tokens: int
    ) -> Hold | None:
        """Reserve the worst case; None when it is free (every eligible provider asks 0)."""
        amount = price.worst_case(prompt, max_tokens)
        if amount == 0:
            return None
        try:
            hold_id = self.ledger.hold(consumer, amount, key=f"{request_id}:hold")
        except (InsufficientFunds, UnknownAccount):
            # A consumer who never deposited has no account yet: the same answer, balance 0.
            balance = self.ledger.balance("consumer", consumer)
            raise InsufficientBalance(
                f"Your balance ({balance / BASE_UNITS_PER_USD:.6f} USD) does not cover this "
                f"request's worst case ({amount / BASE_UNITS_PER_USD:.6f} USD: "
                f"{prompt} prompt + {max_tokens} max tokens); deposit funds or lower max_tokens."
            ) from None
        return Hold(hold_id, amount)

    def capture(
        self, hold: Hold, request_id: str, price: Price, prompt: int, completion: int, provider: str
    ) -> Capture:
        cost = min(hold.amount, price.cost(prompt, completion))
        if cost == 0:
            self.ledger.release(hold.hold_id, key=f"{request_id}:release")
            return Capture(hold.hold_id, charged=0, fee=0, provider_amount=0, released=hold.amount)
        return self.ledger.capture(
            hold.hold_id, cost, provider, self.fee_bps, key=f"{request_id}:capture"
        )

    def release(self, hold: Hold, request_id: str) -> None:
        self.ledger.release(hold.hold_id, key=f"{request_id}:release")
