"""When to try again, how long to wait first, and the one loop that does it.

Discovery requests and downloads are retried alike: whatever raises `Retryable` is tried
again after a backoff, up to the policy's attempts; then `GaveUp` says what the last failure
was, and the caller says what that means for the run.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._defaults import DEFAULT_BACKOFF, DEFAULT_RETRIES, MAX_RETRY_DELAY
from ._exceptions import ExportClientError

__all__ = ["GaveUp", "RetryPolicy", "Retryable", "retrying"]

T = TypeVar("T")


class Retryable(ExportClientError):
    """A failure that may pass: a 5xx or 429, a broken, cut, stalled or wrong body.

    Sources raise it for the client to retry; what reaches a user after the last retry is one
    of the errors below ExportClientError that say what the failure means.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class GaveUp(Exception):
    """Every attempt failed; `error` is the last failure."""

    def __init__(self, error: Retryable, attempts: int) -> None:
        self.error = error
        self.attempts = attempts
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        super().__init__(f"{error} (after {tries})")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.error, self.attempts)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; a server's `Retry-After` takes precedence."""

    retries: int = DEFAULT_RETRIES
    base_delay: float = DEFAULT_BACKOFF
    max_delay: float = MAX_RETRY_DELAY

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        if not 0 <= self.base_delay <= self.max_delay:
            raise ValueError("base_delay must be between 0 and max_delay")

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def delay(self, retry: int, *, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        if retry_after is not None:
            # The server knows its own load better than our guess; only an absurd
            # value is capped, so that a run never sleeps for hours.
            return min(retry_after, self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        # "Equal jitter": half fixed, half random, so clients that failed
        # together do not all come back at the same instant.
        return ceiling / 2 + random.uniform(0, ceiling / 2)


async def retrying(
    attempt: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[Retryable, float], None] | None = None,
) -> T:
    """Runs `attempt(number)` until it succeeds; raises GaveUp after the policy's attempts.

    `on_retry` hears of each failure that is retried, with the delay before the next try.
    """
    for number in range(1, policy.attempts + 1):
        try:
            return await attempt(number)
        except Retryable as error:
            if number == policy.attempts:
                raise GaveUp(error, number) from error
            delay = policy.delay(number, retry_after=error.retry_after)
            if on_retry is not None:
                on_retry(error, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable: the last attempt either returns or raises")
