"""Counting in worker processes gives what counting inline gives, and fails loudly."""

from __future__ import annotations

import asyncio

import pytest

from export_client._counting import BlockCount, CsvLayout, count_block
from export_client._parallel import (
    AdaptiveCounting,
    CountingWorkerError,
    InlineCounting,
    PoolCounting,
)

LAYOUT = CsvLayout(field_count=4, patient_index=0, event_type_index=2)


def block(seed: int, rows: int = 2000) -> bytes:
    lines = [
        f"P{(seed * 7 + i) % 5},2025-08-26T00:00:{i % 60:02d}.5Z,{('hr', 'spo2')[i % 2]},{i}\n"
        for i in range(rows)
    ]
    lines[seed % rows] = "broken,row\n"
    return "".join(lines).encode()


async def ready(pool: PoolCounting) -> None:
    """Waits until the pool's workers are up, so blocks really go to them."""
    assert pool._starting is not None
    await pool._starting


async def test_inline_counting_is_count_block() -> None:
    async with InlineCounting() as counting:
        result = await (await counting.submit(block(1), LAYOUT))
    assert result == count_block(block(1), LAYOUT)


async def test_pool_counts_exactly_as_inline() -> None:
    blocks = [block(seed) for seed in range(12)]
    async with PoolCounting(2) as pool:
        await ready(pool)
        futures = [await pool.submit(data, LAYOUT) for data in blocks]
        results = [await future for future in futures]
        assert {worker.process.pid for worker in pool._workers} == {
            worker.process.pid for worker in pool._workers if worker.process.poll() is None
        }
    assert results == [count_block(data, LAYOUT) for data in blocks]
    assert all(isinstance(result, BlockCount) for result in results)


async def test_without_inline_counting_blocks_wait_for_the_workers() -> None:
    async with PoolCounting(1) as pool:
        future = await pool.submit(block(3), LAYOUT)
        assert len(pool._workers) == 1
        assert await future == count_block(block(3), LAYOUT)


async def test_blocks_are_counted_inline_until_the_workers_are_up() -> None:
    async with PoolCounting(1, inline_until_ready=True) as pool:
        future = await pool.submit(block(3), LAYOUT)
        assert pool._workers == []
        assert asyncio.isfuture(future)
        assert future.done()
        assert future.result() == count_block(block(3), LAYOUT)


async def test_blocks_in_flight_are_bounded() -> None:
    async with PoolCounting(2, depth=1) as pool:
        await ready(pool)
        most = 0
        futures = []
        for seed in range(20):
            futures.append(await pool.submit(block(seed, rows=20000), LAYOUT))
            most = max(most, *(len(worker.pending) for worker in pool._workers))
        await asyncio.gather(*futures)
    assert most == 1


async def test_workers_stop_when_the_pool_closes() -> None:
    async with PoolCounting(2) as pool:
        await ready(pool)
        processes = [worker.process for worker in pool._workers]
    assert all(process.poll() == 0 for process in processes)


async def test_a_worker_that_dies_fails_its_blocks() -> None:
    async with PoolCounting(1) as pool:
        await ready(pool)
        worker = pool._workers[0]
        worker.process.kill()
        worker.process.wait()
        future = await pool.submit(block(1), LAYOUT)
        with pytest.raises(CountingWorkerError, match="stopped"):
            await future


async def test_adaptive_counting_stays_inline_for_a_slow_source() -> None:
    async with AdaptiveCounting(2, window=0.01) as counting:
        for seed in range(5):
            future = await counting.submit(block(seed), LAYOUT)
            assert future.done()
            assert future.result() == count_block(block(seed), LAYOUT)
            await asyncio.sleep(0.05)  # input far slower than counting
        assert not counting.offloading
        assert counting._pool is None


async def test_adaptive_counting_offloads_when_counting_cannot_keep_up() -> None:
    blocks = [block(seed, rows=5000) for seed in range(40)]
    async with AdaptiveCounting(2, share=0.01, window=0.0) as counting:
        futures = [await counting.submit(data, LAYOUT) for data in blocks]
        results = [await future for future in futures]
        assert counting.offloading
        assert counting._pool is not None
    assert results == [count_block(data, LAYOUT) for data in blocks]


async def test_adaptive_counting_can_start_its_workers_before_they_are_needed() -> None:
    async with AdaptiveCounting(1, window=0.01, start_workers=True) as counting:
        assert counting._pool is not None
        await ready(counting._pool)
        assert len(counting._pool._workers) == 1
        # Started is not used: a slow source is still counted inline.
        for seed in range(3):
            future = await counting.submit(block(seed), LAYOUT)
            assert future.done()
            assert future.result() == count_block(block(seed), LAYOUT)
            await asyncio.sleep(0.05)
        assert not counting.offloading
        processes = [worker.process for worker in counting._pool._workers]
    assert all(process.poll() == 0 for process in processes)


async def test_a_block_the_worker_cannot_count_fails_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A layout whose indexes lie outside the rows makes count_block fail inside the worker.
    bad = CsvLayout(field_count=4, patient_index=0, event_type_index=9)
    async with PoolCounting(1) as pool:
        future = await pool.submit(block(1), bad)
        with pytest.raises(CountingWorkerError, match="Counting a block failed"):
            await future
        # The worker survives a bad block.
        assert await (await pool.submit(block(2), LAYOUT)) == count_block(block(2), LAYOUT)


async def test_stopping_with_blocks_in_flight_is_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    async with PoolCounting(2) as pool:
        await ready(pool)
        for seed in range(6):
            await pool.submit(block(seed, rows=20000), LAYOUT)  # results never read
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    assert "never retrieved" not in captured.err
