import asyncio
import errno
import os
import signal
import subprocess
from collections.abc import AsyncIterator

import pytest

from export_server import Catalog, WorkerCrashedError, WorkerError, _link, generate_body
from export_server._link import WorkerLink

from ..processes import running


@pytest.fixture
async def link() -> AsyncIterator[WorkerLink]:
    link = await WorkerLink.start()
    try:
        yield link
    finally:
        await link.stop()


async def test_a_stream_is_the_generated_body(link: WorkerLink, catalog: Catalog) -> None:
    download = (catalog.downloads("tiny") or [])[0]
    chunks = [chunk async for chunk in link.stream(download, chunk_size=1024)]
    assert chunks == list(generate_body(download, chunk_size=1024))
    assert link.load == 0


async def test_a_stalled_stream_does_not_stall_others_on_its_worker(
    link: WorkerLink, catalog: Catalog
) -> None:
    stalled = link.stream((catalog.downloads("big") or [])[0], chunk_size=32768)
    await anext(stalled)
    download = (catalog.downloads("big") or [])[1]
    body = b"".join([chunk async for chunk in link.stream(download, chunk_size=32768)])
    assert body == b"".join(generate_body(download))
    await stalled.aclose()
    assert link.load == 0


async def test_closing_a_stream_cancels_its_job(link: WorkerLink, catalog: Catalog) -> None:
    stream = link.stream((catalog.downloads("big") or [])[0], chunk_size=32768)
    await anext(stream)
    assert link.load == 1
    await stream.aclose()
    assert link.load == 0
    # The worker is free and well: it serves the next stream.
    download = (catalog.downloads("tiny") or [])[0]
    chunks = [chunk async for chunk in link.stream(download, chunk_size=32768)]
    assert chunks == list(generate_body(download))


async def test_the_streams_of_a_dead_worker_fail_at_once(
    link: WorkerLink, catalog: Catalog
) -> None:
    streams = [link.stream(d, chunk_size=32768) for d in (catalog.downloads("big") or [])]
    for stream in streams:
        await anext(stream)
    os.kill(link.process.pid, signal.SIGKILL)
    await link.reader_task
    # Marked dead as the connection ended, and every stream fails rather than looks complete.
    assert link.dead
    assert link.load == 0
    for stream in streams:
        with pytest.raises(WorkerCrashedError, match=f"{link.process.pid} stopped"):
            async for _ in stream:
                pass


async def test_stop_ends_the_worker_and_its_streams(link: WorkerLink, catalog: Catalog) -> None:
    stream = link.stream((catalog.downloads("big") or [])[0], chunk_size=32768)
    await anext(stream)
    await link.stop()
    assert link.process.returncode == 0
    assert not running(link.process.pid)
    with pytest.raises(WorkerCrashedError):
        await anext(stream)


async def test_a_worker_that_cannot_start_is_a_worker_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def cannot_start(fd: int) -> subprocess.Popen[bytes]:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(_link, "_start_process", cannot_start)
    with pytest.raises(
        WorkerError, match=r"^Cannot start a worker process: \[Errno 11\] Resource temporarily"
    ):
        await WorkerLink.start()


async def test_a_worker_whose_connection_fails_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[subprocess.Popen[bytes]] = []
    real_start = _link._start_process

    def start_process(fd: int) -> subprocess.Popen[bytes]:
        started.append(real_start(fd))
        return started[-1]

    async def cannot_connect(**kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(_link, "_start_process", start_process)
    monkeypatch.setattr(asyncio, "open_connection", cannot_connect)
    with pytest.raises(WorkerError, match="Too many open files"):
        await WorkerLink.start()
    [process] = started
    # Killed and reaped, not left running without a connection.
    assert process.returncode == -signal.SIGKILL
