"""Deterministic fault injection: which requests fail, and how."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

__all__ = ["MAX_RETRY_AFTER", "FaultConfig", "FaultInjector", "RequestFaults"]

# HTTP asks recipients to read any larger number of seconds as this one (RFC 9111, 1.2.2).
MAX_RETRY_AFTER = 2**31


@dataclass(frozen=True)
class FaultConfig:
    """How often the server misbehaves on purpose; everything is off by default.

    `fail_rate` is the probability that a data stream is cut (the connection closes without the
    chunked terminator), `error_rate` the probability that any request gets a 503 with a
    `Retry-After` of `retry_after` seconds, `latency` a delay in seconds before every response,
    and `seed` makes the faults of a run replayable.
    """

    fail_rate: float = 0.0
    error_rate: float = 0.0
    latency: float = 0.0
    seed: int = 0
    retry_after: int = 1

    def __post_init__(self) -> None:
        for name in ("fail_rate", "error_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}.")
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise ValueError(f"latency must be finite and not negative, got {self.latency}.")
        if not 0 <= self.retry_after <= MAX_RETRY_AFTER:
            raise ValueError(
                f"retry_after must be from 0 to {MAX_RETRY_AFTER}, got {self.retry_after}."
            )


@dataclass(frozen=True)
class RequestFaults:
    """The faults chosen for one request."""

    error: bool
    cut: bool
    cut_fraction: float
    """Where to cut a data stream, as a fraction of the smallest possible body."""


class FaultInjector:
    """Chooses each request's faults from (seed, path, how many times that path was requested).

    That makes a replay with the same seed and the same requests meet the same faults, whatever
    the interleaving of concurrent requests.
    """

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._requests: Counter[str] = Counter()

    def decide(self, path: str) -> RequestFaults:
        """Draw the faults of the next request for `path`."""
        number = self._requests[path]
        self._requests[path] += 1
        rng = random.Random(f"{self.config.seed}\n{path}\n{number}")
        # Always draw all three so one rate does not shift the others' draws.
        error = rng.random() < self.config.error_rate
        cut = rng.random() < self.config.fail_rate
        return RequestFaults(error=error, cut=cut, cut_fraction=rng.random())
