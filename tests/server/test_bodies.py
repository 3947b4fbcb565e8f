import asyncio
import contextlib
import logging
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import pytest

from export_server import Catalog, WorkerPool, generate_body, running_server
from export_server._bodies import SENDFILE_PIECE, sendfile_chunked

from .sockets import (
    chunk_sizes,
    chunked_body,
    open_request,
    read_at,
    read_to_end,
    seconds_until_closed,
)

_HEADER = b"patient_id,event_time,event_type,value\n"
_LINE = b"B001,2025-01-01T00:00:00.000001Z,heart_rate,75\n"


def _cache_lines(cache_dir: Path, catalog: Catalog, megabytes: int) -> tuple[bytes, str]:
    """A cached body for download 0 of `big` that no worker would generate, and its URL path."""
    download = (catalog.downloads("big") or [])[0]
    body = _HEADER + _LINE * (megabytes * (1 << 20) // len(_LINE))
    (cache_dir / f"{download.id}.csv").write_bytes(body)
    return body, f"/api/export/big/{download.id}/data"


def test_a_cached_body_is_sent_from_its_file_in_chunks_of_4_mib(
    catalog: Catalog, tmp_path: Path
) -> None:
    body, url = _cache_lines(tmp_path, catalog, 9)
    with (
        running_server(catalog, workers=1, cache_dir=tmp_path) as base,
        open_request(base + url) as reader,
    ):
        response = read_to_end(reader)
    assert chunked_body(response) == body
    assert chunk_sizes(response) == [4 << 20, 4 << 20, len(body) - (8 << 20)]


async def test_a_client_leaving_a_cached_stream_is_no_error(
    catalog: Catalog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Far more than the socket buffers hold: the server is mid-sendfile when the client goes.
    _, url = _cache_lines(tmp_path, catalog, 64)
    tiny = (catalog.downloads("tiny") or [])[0]
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        for _ in range(3):
            async with aiohttp.ClientSession() as session:
                response = await session.get(base + url)
                await response.content.readexactly(100_000)
                response.close()
        # The server still serves, from the cache and from a worker.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base}/api/export/tiny/{tiny.id}/data") as response,
        ):
            assert await response.read() == b"".join(generate_body(tiny))
    assert problems(caplog) == []


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert condition()


def test_a_client_that_never_reads_is_cut_off_and_its_job_and_cache_file_dropped(
    catalog: Catalog, tmp_path: Path, caplog: pytest.LogCaptureFixture, pools: list[WorkerPool]
) -> None:
    download = (catalog.downloads("big") or [])[0]
    path = f"/api/export/big/{download.id}/data"
    with running_server(catalog, workers=1, cache_dir=tmp_path, write_timeout=0.5) as url:
        [pool] = pools
        with open_request(url + path) as stalled:
            # The body (4.5 MB) is far more than the socket buffers hold: the server waits.
            wait_until(lambda: pool.loads == [1] and any(tmp_path.glob("*.tmp")))
            seconds = seconds_until_closed(stalled, timeout=20)
            assert seconds is not None, "the server kept the connection of a client that stalled"
            # A reset, not a FIN queued behind the megabytes the client never read.
            with pytest.raises(ConnectionResetError):
                read_to_end(stalled)
        # The generation job and the cache file went with the connection.
        assert pool.loads == [0]
        assert list(tmp_path.iterdir()) == []
        [warning] = problems(caplog)
        assert warning == (
            f"Cut off the client of download {download.id}: it did not take the next piece of the "
            "body in 0.5 s."
        )
        # The server still serves, and caches.
        with urllib.request.urlopen(url + path, timeout=20) as response:
            assert response.read() == b"".join(generate_body(download))
        wait_until(lambda: [p.name for p in tmp_path.iterdir()] == [f"{download.id}.csv"])


def test_a_slow_reader_is_not_cut_off(catalog: Catalog, caplog: pytest.LogCaptureFixture) -> None:
    download = (catalog.downloads("big") or [])[1]
    expected = b"".join(generate_body(download))
    # 2 MB/s: the whole body takes about 2.3 s, more than the timeout, but each chunk comes
    # and goes in a fraction of it.
    with (
        running_server(catalog, workers=1, write_timeout=1.0) as url,
        open_request(f"{url}/api/export/big/{download.id}/data") as reader,
    ):
        response = read_at(reader, 2e6)
    assert chunked_body(response) == expected
    assert problems(caplog) == []


def test_no_write_timeout_at_all(catalog: Catalog) -> None:
    download = (catalog.downloads("tiny") or [])[0]
    with (
        running_server(catalog, workers=1, write_timeout=None) as url,
        open_request(f"{url}/api/export/tiny/{download.id}/data") as reader,
    ):
        assert chunked_body(read_at(reader, 1e9)) == b"".join(generate_body(download))


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
