"""Per-key rate limits (token bucket) and daily token quotas: 429 with Retry-After.

In memory, per coordinator process: with several replicas each enforces its share (documented in
docs/architecture.md); the quota is seeded from the requests table, so a restart does not
reset a key's daily usage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rigpool.core.errors import RigpoolError


class RateLimited(RigpoolError):
    status_code = 429
    error_type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimiter:
    """`rate_per_min` requests per minute per key, with bursts up to `burst`."""

    rate_per_min: float
    burst: float
    daily_token_quota: int | None = None
    _buckets: dict[int, _Bucket] = field(default_factory=dict)
    _used_today: dict[int, int] = field(default_factory=dict)
    _day: str = ""

    def admit(self, key_id: int, now: float | None = None) -> None:
        """Take one request from the key's bucket or raise RateLimited with the wait."""
        now = time.monotonic() if now is None else now
        rate = self.rate_per_min / 60.0
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / rate if rate > 0 else 60.0
            raise RateLimited(
                f"Rate limit reached: {self.rate_per_min:g} requests per minute for this key. "
                f"Retry after {math.ceil(wait)} s.",
                retry_after_s=wait,
            )
        bucket.tokens -= 1.0

    def check_quota(self, used_today: Callable[[int], int], key_id: int) -> None:
        """Refuse a key that used its daily token quota (counted by the gateway, UTC days).

        `used_today(key_id)` seeds a key's count from the requests table (may block).
        """
        if self.daily_token_quota is None:
            return
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        if today != self._day:
            self._day, self._used_today = today, {}
        if key_id not in self._used_today:
            self._used_today[key_id] = used_today(key_id)
        if self._used_today[key_id] >= self.daily_token_quota:
            now = datetime.now(UTC)
            left = 86400 - (now.hour * 3600 + now.minute * 60 + now.second)
            raise RateLimited(
                f"Daily quota of {self.daily_token_quota} tokens used for this key; it resets at "
                "00:00 UTC.",
                retry_after_s=left,
            )

    def charge(self, key_id: int, tokens: int) -> None:
        if self.daily_token_quota is not None and key_id in self._used_today:
            self._used_today[key_id] += tokens
