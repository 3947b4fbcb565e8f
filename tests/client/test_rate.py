"""--limit-rate: parsing a rate, and the token bucket every stream of a process shares."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from export_client._rate import RateLimit, parse_rate


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("65536", 65536),
        ("500K", 500 * 1024),
        ("500k", 500 * 1024),
        ("20M", 20 * 1024**2),
        ("1.5G", 1.5 * 1024**3),
        (" 2m ", 2 * 1024**2),
        (".5K", 512),
    ],
)
def test_rates_as_curl_reads_them(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "M", "20MB", "-1K", "1e6", "0", "0.5", "inf", "nan", "1 2"])
def test_what_is_not_a_rate(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|byte per second"):
        parse_rate(text)


def test_the_bucket_allows_a_burst_then_the_rate() -> None:
    limit = RateLimit(1000, burst_seconds=0.1)
    # A tenth of a second's worth at once (to the float rounding of the clock's arithmetic).
    assert limit.reserve(100) == pytest.approx(0.0, abs=1e-9)
    wait = limit.reserve(500)
    assert 0.45 <= wait <= 0.5 + 1e-3


async def test_taking_bytes_takes_as_long_as_the_rate_says() -> None:
    limit = RateLimit(100_000, burst_seconds=0.05)
    started = time.monotonic()
    for _ in range(30):
        await limit.take(10_000)  # 300 kB at 100 kB/s
    elapsed = time.monotonic() - started
    assert 2.9 <= elapsed < 6


def test_threads_with_their_own_event_loops_share_one_limit() -> None:
    # As the tasks of a Dask worker do: each thread runs asyncio.run, all take from one bucket.
    limit = RateLimit(200_000, burst_seconds=0.05)

    async def read() -> None:
        for _ in range(10):
            await limit.take(10_000)

    threads = [threading.Thread(target=asyncio.run, args=(read(),)) for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1.4 <= time.monotonic() - started < 5  # 300 kB at 200 kB/s, not a third of that


def test_a_limit_must_be_positive() -> None:
    for rate in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="positive"):
            RateLimit(rate)
