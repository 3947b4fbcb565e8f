"""A download's body on the wire: generated or cached, cut on purpose, under a write timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import BinaryIO

from aiohttp import web

from ._cache import CacheWriter, DiskCache
from ._catalog import DownloadSpec
from ._exceptions import WorkerError
from ._generate import min_body_size
from ._pool import WorkerPool

__all__ = ["DEFAULT_WRITE_TIMEOUT", "SENDFILE_PIECE", "BodySender", "sendfile_chunked"]

# How long a data stream may wait for its client to take the next piece of the body.
DEFAULT_WRITE_TIMEOUT = 60.0

# The most one `loop.sendfile` call sends, and so the unit of the write timeout for a cached
# body: a whole 4 MiB chunk. Each further call costs a wake-up and a short send at its start:
# 1 MiB pieces took 10% longer to serve a cached body over loopback, and 25% more CPU.
SENDFILE_PIECE = 4 << 20

logger = logging.getLogger("export_server")

_LINGER_ZERO = struct.pack("ii", 1, 0)


class BodySender:
    """Sends bodies from the cache where it has them, else as the worker pool generates them.

    A client that leaves a piece of a body untaken for `write_timeout` seconds (None: no limit)
    is cut off: the connection is reset, and its generation job and cache file are dropped.
    """

    def __init__(
        self, pool: WorkerPool, cache: DiskCache | None, *, write_timeout: float | None
    ) -> None:
        self.pool = pool
        self.cache = cache
        self.write_timeout = write_timeout

    async def send(
        self, request: web.Request, download: DownloadSpec, *, cut_fraction: float | None = None
    ) -> web.StreamResponse:
        """Answer `request` with the body of `download`, chunked.

        A generated body goes out as the worker makes it (the header, then runs of whole lines
        of about 32 KiB), a cached one in large chunks cut anywhere (see `sendfile_chunked`): the
        API tells clients not to rely on chunk boundaries. With `cut_fraction`, the connection
        is cut that fraction of the way into the smallest body the download can have, so surely
        before its end.
        """
        cut_at = None if cut_fraction is None else int(cut_fraction * min_body_size(download))
        response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8"})
        response.enable_chunked_encoding()
        try:
            # Opened before the response starts, so a file that cannot be read is generated
            # instead.
            cached = await self.cache.open_cached(download.id) if self.cache is not None else None
            if cached is not None:
                with cached:
                    await self._send_cached(request, response, cached, cut_at)
            else:
                await self._send_generated(request, response, download, cut_at)
        except ConnectionError:
            # Not an error of ours: the client went away mid-stream.
            logger.debug("The client of download %s went away mid-stream.", download.id)
        except TimeoutError:
            # By now the generation job is cancelled and the cache file discarded.
            _abort_connection(request)
            logger.warning(
                "Cut off the client of download %s: it did not take the next piece of the body"
                " in %g s.",
                download.id,
                self.write_timeout,
            )
        return response

    async def _send_cached(
        self,
        request: web.Request,
        response: web.StreamResponse,
        cached: BinaryIO,
        cut_at: int | None,
    ) -> None:
        body = await response.prepare(request)
        if request.transport is None or body is None:
            raise ConnectionResetError("The client went away.")
        complete = await sendfile_chunked(
            request.transport,
            cached,
            drain=body.drain,
            limit=cut_at,
            write_timeout=self.write_timeout,
        )
        if not complete:
            _cut_connection(request)

    async def _send_generated(
        self,
        request: web.Request,
        response: web.StreamResponse,
        download: DownloadSpec,
        cut_at: int | None,
    ) -> None:
        async with contextlib.AsyncExitStack() as stack:
            writer = await self.cache.writer(download.id) if self.cache is not None else None
            if writer is not None:
                await stack.enter_async_context(writer)
            await response.prepare(request)
            if not await self._stream(response, download, cut_at, writer):
                _cut_connection(request)
                return
            # The client has the whole body before the cache file is synced and published.
            async with asyncio.timeout(self.write_timeout):
                await response.write_eof()
            if writer is not None:
                await writer.commit()

    async def _stream(
        self,
        response: web.StreamResponse,
        download: DownloadSpec,
        cut_at: int | None,
        cache: CacheWriter | None,
    ) -> bool:
        """Send the generated body; returns False if the connection must be cut instead of ended.

        Raises TimeoutError if the client leaves a chunk untaken for the write timeout.
        """
        sent = 0
        chunks = self.pool.stream(download)
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if cut_at is not None and sent + len(chunk) > cut_at:
                        async with asyncio.timeout(self.write_timeout):
                            await response.write(chunk[: cut_at - sent])
                        return False
                    if cache is not None:
                        await cache.write(chunk)
                    # `write` waits only when the transport holds over 64 KiB the kernel has not
                    # taken, and then until it holds 16 KiB at most.
                    async with asyncio.timeout(self.write_timeout):
                        await response.write(chunk)
                    sent += len(chunk)
        except WorkerError as exc:
            logger.error("Cutting the stream of download %s: %s", download.id, exc)
            return False
        return True


def _abort_connection(request: web.Request) -> None:
    """Drop the connection at once, with what is still queued for the client."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # A reset rather than a FIN: a FIN would wait behind the unread bytes in the kernel's
        # buffer, which a client that does not read never takes, and the kernel would keep them.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


def _cut_connection(request: web.Request) -> None:
    # close() (not abort()) first sends what is buffered, so the client gets every byte before
    # the cut and then a connection closed without the chunked terminator.
    if request.transport is not None:
        request.transport.close()


async def sendfile_chunked(
    transport: asyncio.WriteTransport,
    file: BinaryIO,
    *,
    drain: Callable[[], Awaitable[None]],
    limit: int | None = None,
    write_timeout: float | None = None,
    segment: int = 4 << 20,
    piece: int = SENDFILE_PIECE,
) -> bool:
    """Send an open file as HTTP chunks of `segment` bytes with `loop.sendfile`.

    The chunks are cut at byte offsets, usually mid-line, unlike the runs of whole lines of a
    generated body: the API tells clients not to rely on chunk boundaries, and large chunks keep
    a cached body on the kernel's zero-copy path.

    The response headers must already be on the transport; the caller sends the terminating
    chunk. `drain` waits until the transport has handed what it buffered to the kernel (the
    response writer's `drain`). Each chunk goes out in `sendfile` calls of at most `piece`
    bytes; with `write_timeout`, each call, and each wait for the chunk framing to leave, must
    end within that many seconds, or TimeoutError is raised: the client stopped reading.

    With `limit`, stop after that many body bytes, possibly mid-chunk. Returns whether the whole
    file was sent; False means the connection must be cut rather than ended (at `limit`, or if
    the file shrank, as a chunk must never be shorter than its announced size). Raises
    ConnectionResetError if the client goes away.
    """
    loop = asyncio.get_running_loop()
    size = os.fstat(file.fileno()).st_size
    end = size if limit is None else min(size, limit)
    offset = 0
    low, high = transport.get_write_buffer_limits()
    # With no free room in the transport's buffer, `drain` returns only once the framing has
    # reached the kernel. `loop.sendfile` would wait for that too, but in a way that cannot be
    # cancelled safely: a timeout there leaves the transport with a cancelled waiter that it
    # later fails ("InvalidStateError" in the loop's log). Once the buffer is empty,
    # `loop.sendfile` waits only in its `os.sendfile` loop, which cancels cleanly.
    transport.set_write_buffer_limits(high=0)
    try:
        while offset < size:
            if transport.is_closing():
                raise ConnectionResetError("The client went away.")
            count = min(segment, size - offset)
            transport.write(f"{count:x}\r\n".encode())
            async with asyncio.timeout(write_timeout):
                await drain()
            stop = offset + min(count, end - offset)
            chunk_end = offset + count
            while offset < stop:
                wanted = min(piece, stop - offset)
                async with asyncio.timeout(write_timeout):
                    sent = await loop.sendfile(transport, file, offset, wanted)
                offset += sent
                if sent < wanted:
                    return False
            if offset < chunk_end:
                return False
            transport.write(b"\r\n")
        async with asyncio.timeout(write_timeout):
            await drain()
    except RuntimeError as exc:
        # asyncio's "Transport is closing": the client left between two checks.
        if not transport.is_closing():
            raise
        raise ConnectionResetError("The client went away.") from exc
    finally:
        transport.set_write_buffer_limits(high, low)
    return True
