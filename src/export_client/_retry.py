"""When to try again, and how long to wait first."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; a server's `Retry-After` takes precedence."""

    retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay(self, retry: int, *, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        if retry_after is not None:
            # The server knows its own load better than our guess; only an absurd
            # value is capped, so that a run never sleeps for hours.
            return min(retry_after, self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        # "Equal jitter": half fixed, half random, so clients that failed
        # together do not all come back at the same instant.
        return ceiling / 2 + random.uniform(0, ceiling / 2)
