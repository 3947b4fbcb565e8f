import asyncio
import contextlib
import errno
import itertools
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from export_server import (
    Catalog,
    WorkerCrashedError,
    WorkerError,
    WorkerPool,
    _link,
    _pool,
    generate_body,
    running_server,
)

from ..processes import running, still_running


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
    streams = [pool.stream(download) for download in downloads]
    bodies = [bytearray(await anext(stream)) for stream in streams]
    # Each stream went to its own worker process.
    assert pool.loads == [1, 1]
    assert len(set(pool.pids)) == 2

    async def take(stream: AsyncIterator[bytes], body: bytearray, chunks: int) -> None:
        for _ in range(chunks):
            body += await anext(stream)

    # A worker runs at most its credit (a few chunks) ahead of its reader, so the chunks read in
    # this window were generated in it: both processes must have been busy in the same window.
    # (About 0.1 s of CPU each; one process doing both, or one after the other, fails this.)
    before = [cpu_seconds(pid) for pid in pool.pids]
    await asyncio.gather(*(take(s, b, 80) for s, b in zip(streams, bodies, strict=True)))
    busy = [cpu_seconds(pid) - start for pid, start in zip(pool.pids, before, strict=True)]
    assert min(busy) >= 0.04, busy
    for download, stream, body in zip(downloads, streams, bodies, strict=True):
        async for chunk in stream:
            body += chunk
        assert body == b"".join(generate_body(download))


async def test_a_dead_worker_fails_its_streams_and_is_replaced(
    pool: WorkerPool, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    async with asyncio.timeout(30):
        stream = pool.stream((catalog.downloads("big") or [])[0])
        await anext(stream)
        [victim] = [pid for pid, load in zip(pool.pids, pool.loads, strict=True) if load]
        [survivor] = [pid for pid in pool.pids if pid != victim]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerCrashedError, match=str(victim)):
            async for _ in stream:
                pass
        for _ in range(100):
            if victim not in pool.pids and len(pool.pids) == 2:
                break
            await asyncio.sleep(0.05)
        assert victim not in pool.pids
        # Each slot has its own supervisor: the other worker was left alone.
        assert survivor in pool.pids
        assert "died" in caplog.text
        download = (catalog.downloads("tiny") or [])[1]
        for _ in range(3):
            assert [c async for c in pool.stream(download)] == list(generate_body(download))


async def test_a_stream_started_while_the_only_worker_is_replaced_does_not_hang(
    catalog: Catalog,
) -> None:
    pool = WorkerPool(1)
    await pool.start()
    try:
        async with asyncio.timeout(30):
            stream = pool.stream((catalog.downloads("big") or [])[0])
            await anext(stream)
            [victim] = pool.pids
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(WorkerCrashedError):
                async for _ in stream:
                    pass
            # The pool saw the death and is replacing the worker right now: the dead one must
            # not get this stream (it would wait for it forever).
            assert pool.pids == [victim]
            download = (catalog.downloads("tiny") or [])[0]
            assert [c async for c in pool.stream(download)] == list(generate_body(download))
            assert pool.pids != [victim]
    finally:
        await pool.stop()


async def test_a_worker_that_cannot_be_restarted_fails_new_streams(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pool = WorkerPool(1)
    await pool.start()
    try:

        def cannot_start(fd: int) -> subprocess.Popen[bytes]:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

        monkeypatch.setattr(_link, "_start_process", cannot_start)
        monkeypatch.setattr(_pool, "_RESPAWN_BACKOFF", 0.01)
        async with asyncio.timeout(30):
            [victim] = pool.pids
            os.kill(victim, signal.SIGKILL)
            for _ in range(1000):
                if "died" in caplog.text:
                    break
                await asyncio.sleep(0.01)
            # This stream waits for the restarts, which all fail.
            download = (catalog.downloads("tiny") or [])[0]
            with pytest.raises(WorkerCrashedError, match="none could be started"):
                async for _ in pool.stream(download):
                    pass
        assert caplog.text.count("Cannot start a worker process") == _pool._RESPAWN_LIMIT
        assert "Giving up" in caplog.text
    finally:
        await pool.stop()


async def test_a_pool_that_fails_to_start_stops_the_workers_it_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[subprocess.Popen[bytes]] = []
    real_start = _link._start_process

    def start_one_only(fd: int) -> subprocess.Popen[bytes]:
        if started:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        started.append(real_start(fd))
        return started[-1]

    monkeypatch.setattr(_link, "_start_process", start_one_only)
    pool = WorkerPool(3)
    with pytest.raises(WorkerError, match="Cannot start a worker process"):
        await pool.start()
    [process] = started
    assert process.returncode is not None
    assert pool.pids == []


async def until(condition: Callable[[], bool]) -> None:
    """Return once `condition()` holds; fail after 20 s."""
    for _ in range(20_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("gave up waiting")


async def replaced(pool: WorkerPool, pids: list[int]) -> list[int]:
    """The pool's pids once they differ from `pids` and every worker lives again."""
    await until(lambda: pool.pids != pids and all(map(running, pool.pids)))
    return pool.pids


async def test_a_worker_that_keeps_dying_soon_after_its_start_is_given_up(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_pool, "_RESPAWN_LIMIT", 2)
    monkeypatch.setattr(_pool, "_RESPAWN_BACKOFF", 0.01)
    pool = WorkerPool(1)
    await pool.start()
    try:
        async with asyncio.timeout(30):
            pids = pool.pids
            # Dying within seconds of its start counts as a failed start: the first death is
            # one failure, its replacement's death two, and the next death is over the limit.
            for _ in range(2):
                os.kill(pids[0], signal.SIGKILL)
                pids = await replaced(pool, pids)
            os.kill(pids[0], signal.SIGKILL)
            await until(lambda: "Giving up" in caplog.text)
        # A new stream fails at once instead of waiting for a replacement that will not come.
        async with asyncio.timeout(1):
            with pytest.raises(WorkerCrashedError, match="none could be started"):
                await anext(pool.stream((catalog.downloads("tiny") or [])[0]))
        assert caplog.text.count("died; starting a new one") == 3
    finally:
        await pool.stop()


async def test_a_worker_that_ran_a_while_is_replaced_however_often_it_dies(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_pool, "_RESPAWN_LIMIT", 1)
    # Every worker has run long enough: its death is not held against the next one.
    monkeypatch.setattr(_pool, "_STABLE_AFTER", 0.0)
    pool = WorkerPool(1)
    await pool.start()
    try:
        async with asyncio.timeout(30):
            pids = pool.pids
            for _ in range(3):
                os.kill(pids[0], signal.SIGKILL)
                pids = await replaced(pool, pids)
        assert "Giving up" not in caplog.text
    finally:
        await pool.stop()


async def test_failed_starts_are_retried_after_doubling_delays(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[float] = []

    def cannot_start(fd: int) -> subprocess.Popen[bytes]:
        attempts.append(time.monotonic())
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(_pool, "_RESPAWN_LIMIT", 4)
    monkeypatch.setattr(_pool, "_RESPAWN_BACKOFF", 0.05)
    pool = WorkerPool(1)
    await pool.start()
    try:
        monkeypatch.setattr(_link, "_start_process", cannot_start)
        async with asyncio.timeout(30):
            os.kill(pool.pids[0], signal.SIGKILL)
            await until(lambda: "Giving up" in caplog.text)
    finally:
        await pool.stop()
    assert len(attempts) == 4
    # The first start right after the death, then after 0.05, 0.1 and 0.2 s.
    delays = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    wanted = [0.05, 0.1, 0.2]
    assert [delay >= low for delay, low in zip(delays, wanted, strict=True)] == [True] * 3, delays
    assert caplog.text.count("(attempt ") == 4
    assert "(attempt 4 of 4)" in caplog.text


async def test_stopping_does_not_wait_for_a_backoff(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def cannot_start(fd: int) -> subprocess.Popen[bytes]:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(_pool, "_RESPAWN_BACKOFF", 60.0)
    pool = WorkerPool(1)
    await pool.start()
    try:
        monkeypatch.setattr(_link, "_start_process", cannot_start)
        async with asyncio.timeout(30):
            os.kill(pool.pids[0], signal.SIGKILL)
            # The first start failed at once; the next waits a minute.
            await until(lambda: "(attempt 1 of" in caplog.text)
    finally:
        async with asyncio.timeout(5):
            await pool.stop()
    assert pool.pids == []


async def test_stopping_while_a_worker_is_replaced_leaves_no_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[subprocess.Popen[bytes]] = []
    real_start = _link._start_process

    def start_process(fd: int) -> subprocess.Popen[bytes]:
        started.append(real_start(fd))
        return started[-1]

    monkeypatch.setattr(_link, "_start_process", start_process)
    pool = WorkerPool(2)
    await pool.start()
    try:
        os.kill(pool.pids[0], signal.SIGKILL)
        # Give the supervisor time to see the death and start the replacement.
        await until(lambda: len(started) == 3)
    finally:
        await pool.stop()
    assert [process.returncode is not None for process in started] == [True] * 3
    assert still_running([process.pid for process in started], timeout=0) == []


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
