import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import threading
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

import aiofiles
import aiohttp
import pytest

from export_server import Catalog, generate_body, running_server
from export_server._cache import SENDFILE_PIECE, DiskCache, sendfile_chunked

from .sockets import chunked_body, open_request, read_at, read_to_end, seconds_until_closed


async def fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in response.headers
        return await response.read()


def leftovers(cache_dir: Path) -> list[str]:
    return sorted(path.name for path in cache_dir.iterdir())


async def wait_until(condition: Callable[[], bool]) -> None:
    # The cache file is published just after the client got the whole body.
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.02)
    assert condition()


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_first_response_is_cached_and_later_ones_come_from_disk(
    catalog: Catalog, tmp_path: Path
) -> None:
    download = (catalog.downloads("tiny") or [])[1]
    expected = b"".join(generate_body(download))
    url = f"/api/export/tiny/{download.id}/data"
    cached = tmp_path / f"{download.id}.csv"
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        assert await fetch(base + url) == expected
        await wait_until(lambda: leftovers(tmp_path) == [cached.name])
        assert cached.read_bytes() == expected
        assert await fetch(base + url) == expected
        # Proof that the second response came from the file rather than from a worker.
        cached.write_bytes(b"patient_id,event_time,event_type,value\nfrom,the,cache,1\n")
        assert await fetch(base + url) == cached.read_bytes()


async def test_cached_body_larger_than_a_sendfile_segment(catalog: Catalog, tmp_path: Path) -> None:
    download = (catalog.downloads("big") or [])[0]
    expected = b"".join(generate_body(download))
    assert len(expected) > 4 << 20
    url = f"/api/export/big/{download.id}/data"
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        assert await fetch(base + url) == expected
        await wait_until(lambda: leftovers(tmp_path) == [f"{download.id}.csv"])
        assert await fetch(base + url) == expected
    assert leftovers(tmp_path) == [f"{download.id}.csv"]


async def test_an_interrupted_first_stream_leaves_no_cache_file(
    catalog: Catalog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    download = (catalog.downloads("big") or [])[1]
    url = f"/api/export/big/{download.id}/data"
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        async with aiohttp.ClientSession() as session:
            response = await session.get(base + url)
            await response.content.readexactly(1000)
            assert any(name.endswith(".tmp") for name in leftovers(tmp_path))
            response.close()
        await wait_until(lambda: not leftovers(tmp_path))
    # A client going away is not a server error.
    assert problems(caplog) == []


async def test_a_client_leaving_a_cached_stream_is_no_error(
    catalog: Catalog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    download = (catalog.downloads("big") or [])[0]
    # Far more than the socket buffers hold, so the server is mid-sendfile when the client goes.
    line = b"B001,2025-01-01T00:00:00.000001Z,heart_rate,75\n"
    with (tmp_path / f"{download.id}.csv").open("wb") as file:
        file.write(b"patient_id,event_time,event_type,value\n")
        file.write(line * (64 * (1 << 20) // len(line)))
    tiny = (catalog.downloads("tiny") or [])[0]
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        for _ in range(3):
            async with aiohttp.ClientSession() as session:
                response = await session.get(f"{base}/api/export/big/{download.id}/data")
                await response.content.readexactly(100_000)
                response.close()
        # The server still serves, from the cache and from a worker.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base}/api/export/tiny/{tiny.id}/data") as response,
        ):
            assert await response.read() == b"".join(generate_body(tiny))
    assert problems(caplog) == []


async def test_two_concurrent_first_requests_cache_one_file(
    catalog: Catalog, tmp_path: Path
) -> None:
    download = (catalog.downloads("big") or [])[1]
    expected = b"".join(generate_body(download))
    url = f"/api/export/big/{download.id}/data"
    with running_server(catalog=catalog, workers=2, cache_dir=tmp_path) as base:
        first, second = await asyncio.gather(fetch(base + url), fetch(base + url))
        assert first == expected
        assert second == expected
        await wait_until(lambda: leftovers(tmp_path) == [f"{download.id}.csv"])
    assert leftovers(tmp_path) == [f"{download.id}.csv"]
    assert (tmp_path / f"{download.id}.csv").read_bytes() == expected


def failing_cache(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Make the cache files fail the way `how` says."""
    real_open = aiofiles.open

    def open_file(path: Path, mode: str) -> Any:
        if how == "create":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        opening = real_open(path, mode)  # type: ignore[call-overload]

        async def opened() -> Any:
            file = await opening
            if how == "write":

                async def write(data: bytes) -> int:
                    raise OSError(errno.ENOSPC, "No space left on device")

                file.write = write
            elif how == "removed":
                # By someone else, while the body is being written.
                await asyncio.to_thread(path.unlink)
            return file

        return opened()

    monkeypatch.setattr(aiofiles, "open", open_file)


@pytest.mark.parametrize("how", ["create", "write", "removed"])
async def test_the_cache_is_best_effort(
    catalog: Catalog,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    download = (catalog.downloads("big") or [])[0]
    expected = b"".join(generate_body(download))
    url = f"/api/export/big/{download.id}/data"
    failing_cache(monkeypatch, how)
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        assert await fetch(base + url) == expected
        await wait_until(lambda: bool(problems(caplog)))
        assert leftovers(tmp_path) == []
        monkeypatch.undo()
        # Once the cache works again, it caches.
        assert await fetch(base + url) == expected
        await wait_until(lambda: leftovers(tmp_path) == [f"{download.id}.csv"])
    [warning] = problems(caplog)
    assert warning.startswith("Not caching ")
    assert str(download.id) in warning


async def test_an_unreadable_cache_file_is_generated_instead(
    catalog: Catalog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    download = (catalog.downloads("tiny") or [])[0]
    (tmp_path / f"{download.id}.csv").mkdir()
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        assert await fetch(f"{base}/api/export/tiny/{download.id}/data") == b"".join(
            generate_body(download)
        )
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [
        logging.WARNING,
        logging.WARNING,  # reading the cached body, then publishing the new one
    ]


async def test_stale_temporary_files_are_removed_and_nothing_else(
    catalog: Catalog, tmp_path: Path
) -> None:
    download = (catalog.downloads("tiny") or [])[0]
    stale = tmp_path / f"{download.id}.csv.0123456789abcdef.tmp"
    stale.write_bytes(b"patient_id,event_time,event_type,value\n")
    kept = [
        "notes.txt",
        "data.csv.old.tmp",
        f"{download.id}.csv.old.tmp",
        f"{download.id}.csv.0123456789ABCDEF.tmp",
        f"{download.id.hex}.csv.0123456789abcdef.tmp",
        f"x{download.id}.csv.0123456789abcdef.tmp",
        f"{uuid.uuid4()}.csv.0123456789abcdef0.tmp",
    ]
    for name in kept:
        (tmp_path / name).write_text("kept")
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path):
        assert leftovers(tmp_path) == sorted(kept)
    assert leftovers(tmp_path) == sorted(kept)


async def test_cache_dir_is_created(catalog: Catalog, tmp_path: Path) -> None:
    cache_dir = tmp_path / "a" / "b"
    download = (catalog.downloads("tiny") or [])[0]
    with running_server(catalog, workers=1, cache_dir=cache_dir) as base:
        await fetch(f"{base}/api/export/tiny/{download.id}/data")
    assert leftovers(cache_dir) == [f"{download.id}.csv"]


async def test_commit_syncs_the_file_then_renames_then_syncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    loop_thread = threading.current_thread()

    def fsync(fd: int) -> None:
        assert threading.current_thread() is not loop_thread, "fsync blocked the event loop"
        events.append("fsync directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(source: Path, target: Path) -> None:
        events.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    cache = DiskCache(tmp_path)
    download_id = uuid.uuid4()
    writer = await cache.writer(download_id)
    assert writer is not None
    async with writer:
        await writer.write(b"patient_id,event_time,event_type,value\n")
        await writer.commit()
    assert events == ["fsync file", "rename", "fsync directory"]
    assert leftovers(tmp_path) == [f"{download_id}.csv"]


class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.limits = (16384, 65536)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.limits

    def set_write_buffer_limits(self, high: int, low: int | None = None) -> None:
        self.limits = (high // 4 if low is None else low, high)


async def _drained() -> None:
    pass


async def test_a_file_that_shrinks_while_it_is_sent_is_cut_not_misframed(tmp_path: Path) -> None:
    path = tmp_path / "body.csv"
    path.write_bytes(b"x" * 100)
    transport = _Transport()

    async def sendfile(transport: object, file: object, offset: int, count: int) -> int:
        return count - 10  # as if the file had been truncated meanwhile

    loop = asyncio.get_running_loop()
    loop.sendfile = sendfile  # type: ignore[method-assign,assignment]
    try:
        with path.open("rb") as file:
            complete = await sendfile_chunked(
                transport,  # type: ignore[arg-type]
                file,
                drain=_drained,
                segment=64,
            )
    finally:
        del loop.sendfile
    assert not complete
    assert transport.limits == (16384, 65536)
    # The first chunk was announced as 64 bytes and is never closed: the caller cuts the
    # connection instead of sending a terminator after a short chunk.
    assert transport.written == b"40\r\n"


def _open_descriptors(path: Path) -> list[str]:
    """This process's file descriptors open on `path` (the test runs the server in a thread)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if fd.readlink() == path:
                found.append(fd.name)
    return found


def _cache_big(catalog: Catalog, cache_dir: Path, index: int) -> tuple[Path, bytes, str]:
    """A cache file holding a body of `big` (4.5 MB, more than the socket buffers hold)."""
    download = (catalog.downloads("big") or [])[index]
    body = b"".join(generate_body(download))
    path = cache_dir / f"{download.id}.csv"
    path.write_bytes(body)
    return path, body, f"/api/export/big/{download.id}/data"


def test_a_client_that_never_reads_a_cached_body_is_cut_off(
    catalog: Catalog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, body, url = _cache_big(catalog, tmp_path, 0)
    before = path.stat()
    with running_server(catalog, workers=1, cache_dir=tmp_path, write_timeout=0.5) as base:
        with open_request(base + url) as stalled:
            seconds = seconds_until_closed(stalled, timeout=20)
            assert seconds is not None, "the server kept the connection of a client that stalled"
            with pytest.raises(ConnectionResetError):
                read_to_end(stalled)
        # The file was closed with the connection.
        assert _open_descriptors(path) == []
        [warning] = problems(caplog)
        assert warning.startswith("Cut off the client of download ")
        assert warning.endswith(": it did not take the next piece of the body in 0.5 s.")
        with urllib.request.urlopen(base + url, timeout=20) as response:
            assert response.read() == body
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_slow_reader_of_a_cached_body_is_not_cut_off(
    catalog: Catalog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, body, url = _cache_big(catalog, tmp_path, 1)
    assert len(body) > 4 << 20
    # At 2 MB/s the body takes about 2.3 s, more than the timeout, and each sendfile call a
    # fraction of it (the kernel takes bytes as a third of its send buffer, up to 4 MiB, frees).
    with (
        running_server(catalog, workers=1, cache_dir=tmp_path, write_timeout=1.5) as base,
        open_request(base + url) as reader,
    ):
        response = read_at(reader, 2e6)
    assert chunked_body(response) == body
    assert problems(caplog) == []


@pytest.mark.parametrize(
    ("segment", "piece"), [(64, SENDFILE_PIECE), (512, 64)], ids=["chunk-per-call", "pieces"]
)
async def test_the_write_timeout_bounds_each_sendfile_call_not_the_body(
    tmp_path: Path, segment: int, piece: int
) -> None:
    path = tmp_path / "body.csv"
    body = bytes(range(256)) * 4
    path.write_bytes(body)
    transport = _Transport()
    calls: list[int] = []

    async def sendfile(transport: _Transport, file: BinaryIO, offset: int, count: int) -> int:
        # A client that takes 64 bytes every 0.05 s: the body takes 0.8 s, each call 0.05 s.
        await asyncio.sleep(0.05 * count / 64)
        calls.append(count)
        file.seek(offset)
        transport.write(file.read(count))
        return count

    loop = asyncio.get_running_loop()
    loop.sendfile = sendfile  # type: ignore[method-assign,assignment]
    try:
        with path.open("rb") as file:
            complete = await sendfile_chunked(
                transport,  # type: ignore[arg-type]
                file,
                drain=_drained,
                write_timeout=0.25,
                segment=segment,
                piece=piece,
            )
    finally:
        del loop.sendfile
    assert complete
    assert calls == [64] * 16
    size = f"{segment:x}\r\n".encode()
    chunks = [body[i : i + segment] for i in range(0, len(body), segment)]
    assert transport.written == b"".join(size + chunk + b"\r\n" for chunk in chunks)


@contextlib.asynccontextmanager
async def _stalled_connection() -> AsyncIterator[asyncio.StreamWriter]:
    """The server side of a loopback connection whose client never reads."""
    connected: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set_result(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    client = socket.socket()
    client.setblocking(False)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    try:
        await asyncio.get_running_loop().sock_connect(client, server.sockets[0].getsockname())
        writer = await connected
        try:
            yield writer
        finally:
            writer.transport.abort()
    finally:
        client.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("where", ["in sendfile", "behind buffered bytes"])
async def test_a_stalled_client_times_sendfile_out_cleanly(tmp_path: Path, where: str) -> None:
    path = tmp_path / "body.csv"
    path.write_bytes(b"x" * (16 << 20))
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))
    async with _stalled_connection() as writer:
        if where == "behind buffered bytes":
            # More than the kernel takes: the chunk framing waits in the transport's buffer.
            writer.transport.write(b"y" * (8 << 20))
        with path.open("rb") as file, pytest.raises(TimeoutError):
            await sendfile_chunked(writer.transport, file, drain=writer.drain, write_timeout=0.2)
        assert writer.transport.get_write_buffer_limits() == (16384, 65536)
    # The transport's own clean-up after the abort runs now: it must not trip over a waiter
    # that the timeout cancelled.
    await asyncio.sleep(0.1)
    assert errors == []
