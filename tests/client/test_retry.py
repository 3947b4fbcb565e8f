"""Backoff: exponential, jittered, capped, and overruled by Retry-After."""

from __future__ import annotations

import pytest

from export_client._retry import RetryPolicy


def test_attempts_count_the_first_try() -> None:
    assert RetryPolicy(retries=3).attempts == 4
    assert RetryPolicy(retries=0).attempts == 1


def test_negative_retries_are_refused() -> None:
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)


@pytest.mark.parametrize("retry", [1, 2, 3, 4])
def test_delay_grows_exponentially_with_jitter(retry: int) -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=100.0)
    ceiling = 2.0 ** (retry - 1)
    delays = {policy.delay(retry) for _ in range(200)}
    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(delays) > 1, "jitter must spread the delays"


def test_delay_is_capped() -> None:
    assert RetryPolicy(base_delay=1.0, max_delay=5.0).delay(30) <= 5.0


def test_retry_after_overrules_the_backoff() -> None:
    policy = RetryPolicy(base_delay=10.0, max_delay=60.0)
    assert policy.delay(1, retry_after=0.25) == 0.25
    assert policy.delay(1, retry_after=3600) == 60.0
