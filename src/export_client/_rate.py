"""--limit-rate: at most so many bytes per second, over every stream of a process.

Hand-written because what exists does not fit: aiohttp has no bandwidth limit, and the
asyncio limiters (aiolimiter's AsyncLimiter, say) belong to one event loop and refuse an
amount above their rate, where a Dask worker runs each download in an event loop of its own
thread, all of them under one cap, and a network read may be larger than a second's worth.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

__all__ = ["RateLimit", "parse_rate"]

# curl's --limit-rate and rclone's --bwlimit count K, M and G in powers of 1024.
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([KMG]?)\s*", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """Bytes per second from `20M`, `500k`, `1.5G` or `4096` (K, M, G are 1024-based, as
    curl's); ValueError if it is not such a positive rate."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a rate in bytes per second (for example 20M, 500K or 65536)"
        )
    rate = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if rate < 1:
        raise ValueError(f"{text!r} is below one byte per second")
    return rate


class RateLimit:
    """A token bucket that every stream of a process takes its bytes from, in any thread.

    `take(n)` is called after n bytes were read and sleeps until the bucket allows them, so
    that over any stretch of time the bytes taken stay within `rate` per second plus a burst
    of `burst_seconds` worth. A stream that does not read leaves its bytes in the kernel's
    buffers, so the server's sending slows to the same rate.
    """

    def __init__(self, rate: float, *, burst_seconds: float = 0.1) -> None:
        if not 0 < rate < float("inf"):
            raise ValueError("a rate limit must be a positive number of bytes per second")
        self.rate = rate
        self._burst = burst_seconds
        self._lock = threading.Lock()
        # When the bytes taken so far will have been paid for at `rate` (the "theoretical
        # arrival time" of GCRA): the bucket is full while this lies in the past.
        self._paid_until = time.monotonic()

    def reserve(self, nbytes: int) -> float:
        """Takes `nbytes`; returns the seconds to wait before reading more."""
        with self._lock:
            now = time.monotonic()
            self._paid_until = max(self._paid_until, now) + nbytes / self.rate
            return max(0.0, self._paid_until - now - self._burst)

    async def take(self, nbytes: int) -> float:
        """Takes `nbytes` and waits as long as the rate requires; returns the seconds waited
        (as slept: a busy event loop may wake later than asked)."""
        delay = self.reserve(nbytes)
        if delay <= 0:
            return 0.0
        started = time.monotonic()
        await asyncio.sleep(delay)
        return time.monotonic() - started
