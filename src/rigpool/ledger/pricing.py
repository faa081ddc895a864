"""Prices and costs in integer base units of the payment token.

Prices are posted per million tokens (input and output apart, as every inference market does).
Costs round *up* to a whole base unit: the provider is never paid less than the tokens it served,
and the consumer pays at most one base unit more than the exact figure. The network fee rounds
*down*: the treasury, not a provider, absorbs the rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

from rigpool.ledger.errors import InvalidAmount, LedgerError

BPS = 10_000
MILLION = 1_000_000


@dataclass(frozen=True)
class Price:
    """A posted price: base units per million input (prompt) and output (completion) tokens."""

    input_per_million: int
    output_per_million: int

    def __post_init__(self) -> None:
        for name in ("input_per_million", "output_per_million"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidAmount(f"{name} must be a non-negative integer, got {value!r}")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """What a finished request costs the consumer, from the gateway's own token counts."""
        _check_tokens(prompt_tokens, completion_tokens)
        exact = prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million
        return -(-exact // MILLION)

    def worst_case(self, prompt_tokens: int, max_tokens: int) -> int:
        """The hold at admission: the cost if the model writes all `max_tokens`."""
        return self.cost(prompt_tokens, max_tokens)

    def at_least(self, floor: Price) -> bool:
        return (
            self.input_per_million >= floor.input_per_million
            and self.output_per_million >= floor.output_per_million
        )


def _check_tokens(*counts: int) -> None:
    for count in counts:
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidAmount(f"token counts must be non-negative integers, got {count!r}")


def network_fee(amount: int, fee_bps: int) -> int:
    """The treasury's cut of `amount` at `fee_bps` basis points, rounded down."""
    if not 0 <= fee_bps <= BPS:
        raise InvalidAmount(f"fee_bps must be within 0..{BPS}, got {fee_bps}")
    return amount * fee_bps // BPS


def check_admission(price: Price, *, floor: Price | None, max_price: Price | None) -> None:
    """Refuse a provider price below the network floor or above the consumer's maximum."""
    if floor is not None and not price.at_least(floor):
        raise LedgerError(f"price {price} is below the network floor {floor}")
    if max_price is not None and not max_price.at_least(price):
        raise LedgerError(f"price {price} is above the request's maximum {max_price}")
