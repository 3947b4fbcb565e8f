import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from export_server import Catalog, WorkerCrashedError, WorkerPool, generate_body, running_server


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(2)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_stream_is_the_generated_body(pool: WorkerPool, catalog: Catalog) -> None:
    download = (catalog.downloads("tiny") or [])[0]
    chunks = [chunk async for chunk in pool.stream(download)]
    assert chunks == list(generate_body(download))
    assert pool.loads == [0, 0]


async def test_concurrent_streams_run_in_parallel_processes(
    pool: WorkerPool, catalog: Catalog
) -> None:
    downloads = (catalog.downloads("big") or [])[:2]
    busy_before = [cpu_seconds(pid) for pid in pool.pids]
    intervals: list[tuple[float, float]] = []

    async def consume(stream: AsyncIterator[bytes]) -> bytes:
        body = bytearray()
        async for chunk in stream:
            if not body:
                start = time.monotonic()
            body += chunk
        intervals.append((start, time.monotonic()))
        return bytes(body)

    streams = [pool.stream(download) for download in downloads]
    first_chunks = [await anext(stream) for stream in streams]
    # Each stream went to its own worker process.
    assert pool.loads == [1, 1]
    assert len(set(pool.pids)) == 2
    bodies = await asyncio.gather(*(consume(stream) for stream in streams))
    for download, first, body in zip(downloads, first_chunks, bodies, strict=True):
        assert first + body == b"".join(generate_body(download))
    # Both processes did real work, and at the same time.
    busy = [cpu_seconds(pid) - before for pid, before in zip(pool.pids, busy_before, strict=True)]
    assert min(busy) > 0.05
    (start_a, end_a), (start_b, end_b) = intervals
    assert max(start_a, start_b) < min(end_a, end_b)


async def test_a_stalled_stream_does_not_stall_others_on_its_worker(catalog: Catalog) -> None:
    pool = WorkerPool(1)
    await pool.start()
    try:
        stalled = pool.stream((catalog.downloads("big") or [])[0])
        await anext(stalled)
        download = (catalog.downloads("big") or [])[1]
        body = b"".join([chunk async for chunk in pool.stream(download)])
        assert body == b"".join(generate_body(download))
        await stalled.aclose()
        assert pool.loads == [0]
    finally:
        await pool.stop()


async def test_closing_a_stream_cancels_its_job(pool: WorkerPool, catalog: Catalog) -> None:
    stream = pool.stream((catalog.downloads("big") or [])[0])
    await anext(stream)
    assert sum(pool.loads) == 1
    await stream.aclose()
    assert pool.loads == [0, 0]
    # The worker is free and well: it serves the next stream.
    download = (catalog.downloads("tiny") or [])[0]
    assert [c async for c in pool.stream(download)] == list(generate_body(download))


async def test_a_dead_worker_fails_its_streams_and_is_replaced(
    pool: WorkerPool, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    stream = pool.stream((catalog.downloads("big") or [])[0])
    await anext(stream)
    [victim] = [pid for pid, load in zip(pool.pids, pool.loads, strict=True) if load]
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match=str(victim)):
        async for _ in stream:
            pass
    for _ in range(100):
        if victim not in pool.pids and len(pool.pids) == 2:
            break
        await asyncio.sleep(0.05)
    assert victim not in pool.pids
    assert "died" in caplog.text
    download = (catalog.downloads("tiny") or [])[1]
    for _ in range(3):
        assert [c async for c in pool.stream(download)] == list(generate_body(download))


async def test_a_dead_worker_cuts_the_http_stream(catalog: Catalog) -> None:
    download = (catalog.downloads("big") or [])[0]
    with running_server(catalog=catalog, workers=1) as base:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/api/export/big/{download.id}/data") as response:
                await response.content.readexactly(1000)
                for pid in _worker_pids():
                    os.kill(pid, signal.SIGKILL)
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
            # The replacement worker serves the next request completely.
            tiny = (catalog.downloads("tiny") or [])[0]
            async with session.get(f"{base}/api/export/tiny/{tiny.id}/data") as response:
                assert await response.read() == b"".join(generate_body(tiny))


def _worker_pids() -> list[int]:
    """The worker processes that are children of this (test) process."""
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                if int(stat[1]) == me and b"worker_main" in cmdline:
                    pids.append(int(entry))
    return pids


def test_pool_size_is_validated() -> None:
    with pytest.raises(ValueError, match="at least one"):
        WorkerPool(0)
