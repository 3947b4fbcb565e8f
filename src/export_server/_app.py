"""The aiohttp application: the export API over a catalog, a worker pool, a cache and faults."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from ._cache import CacheWriter, DiskCache, sendfile_chunked
from ._catalog import REFERENCE_CATALOG, Catalog, DownloadSpec
from ._exceptions import WorkerError
from ._faults import FaultConfig, FaultInjector, RequestFaults
from ._generate import CSV_HEADER
from ._workers import WorkerPool

__all__ = ["DEFAULT_WRITE_TIMEOUT", "create_app"]

# How long a data stream may wait for its client to take the next piece of the body.
DEFAULT_WRITE_TIMEOUT = 60.0

logger = logging.getLogger("export_server")

_CATALOG_KEY = web.AppKey("catalog", Catalog)
_POOL_KEY = web.AppKey("pool", WorkerPool)
_CACHE_KEY = web.AppKey("cache", DiskCache)
_FAULTS_KEY = web.AppKey("faults", FaultInjector)
_WRITE_TIMEOUT_KEY: web.AppKey[float | None] = web.AppKey("write_timeout")
_REQUEST_FAULTS = web.RequestKey("faults", RequestFaults)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_LINGER_ZERO = struct.pack("ii", 1, 0)

_HYPHENATED_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# The texts the reference server (a pydantic UUID) accepts: 32 hex digits, or the hyphenated
# form, bare, in braces or after `urn:uuid:`; any case. `uuid.UUID` alone accepts much more.
_UUID_TEXT = re.compile(
    rf"{_HYPHENATED_UUID}|\{{{_HYPHENATED_UUID}\}}|urn:uuid:{_HYPHENATED_UUID}|[0-9a-fA-F]{{32}}"
)


def _json(
    payload: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers=headers,
    )


class _ApiError(Exception):
    """Raised by handlers to answer with an error response of the API."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Answer routing errors (unknown path, wrong method) with a JSON `detail` like the API."""
    try:
        return await handler(request)
    except _ApiError as exc:
        return exc.response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _json({"detail": exc.reason}, status=exc.status, headers=headers)


@web.middleware
async def _inject_faults(request: web.Request, handler: _Handler) -> web.StreamResponse:
    injector = request.app[_FAULTS_KEY]
    faults = injector.decide(request.path)
    if injector.config.latency:
        await asyncio.sleep(injector.config.latency)
    if faults.error:
        return _json(
            {"detail": "Service temporarily unavailable (injected fault)"},
            status=503,
            headers={"Retry-After": str(injector.config.retry_after)},
        )
    request[_REQUEST_FAULTS] = faults
    return await handler(request)


async def _list_exports(request: web.Request) -> web.Response:
    return _json({"data": {"export_ids": request.app[_CATALOG_KEY].export_ids}})


def _downloads(request: web.Request) -> tuple[str, list[DownloadSpec]]:
    export_id = request.match_info["export_id"]
    downloads = request.app[_CATALOG_KEY].downloads(export_id)
    if downloads is None:
        raise _ApiError(_json({"detail": "Export not found"}, status=404))
    return export_id, downloads


async def _get_export(request: web.Request) -> web.Response:
    export_id, downloads = _downloads(request)
    return _json({"data": {"id": export_id, "download_ids": [str(d.id) for d in downloads]}})


def _download(request: web.Request) -> DownloadSpec:
    text = request.match_info["download_id"]
    if not _UUID_TEXT.fullmatch(text):
        # The shape FastAPI (the reference server) gives a path parameter that is not a UUID.
        raise _ApiError(
            _json(
                {
                    "detail": [
                        {
                            "type": "uuid_parsing",
                            "loc": ["path", "download_id"],
                            "msg": "Input should be a valid UUID",
                            "input": text,
                        }
                    ]
                },
                status=422,
            )
        )
    download_id = uuid.UUID(text)
    export_id, _ = _downloads(request)
    download = request.app[_CATALOG_KEY].download(export_id, download_id)
    if download is None:
        raise _ApiError(_json({"detail": "Download not found"}, status=404))
    return download


async def _get_download(request: web.Request) -> web.Response:
    return _json({"data": _download(request).metadata()})


def _min_body_size(download: DownloadSpec) -> int:
    """A lower bound of the body size: where a cut surely falls before the end."""
    shortest_line = (
        min(map(len, download.patients))
        + len(",2025-01-01T00:00:00Z,")
        + min(map(len, download.event_types))
        + len(",00\n")
    )
    return len(CSV_HEADER) + download.rows * shortest_line


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


async def _get_data(request: web.Request) -> web.StreamResponse:
    """Stream the body of a download: from its cache file if there is one, else generated.

    A generated body goes out as the worker makes it (the header, then runs of whole lines of
    about 32 KiB), a cached one in large chunks cut anywhere (see `sendfile_chunked`): the API
    tells clients not to rely on chunk boundaries. A client that leaves a piece of the body
    untaken for the app's write timeout is cut off: the connection is reset, and its generation
    job and cache file are dropped.
    """
    download = _download(request)
    faults = request.get(_REQUEST_FAULTS)
    cut_at = int(faults.cut_fraction * _min_body_size(download)) if faults and faults.cut else None
    timeout = request.app[_WRITE_TIMEOUT_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8"})
    response.enable_chunked_encoding()
    cache = request.app.get(_CACHE_KEY)
    try:
        # Opened before the response starts, so a file that cannot be read is generated instead.
        cached = await cache.open_cached(download.id) if cache is not None else None
        if cached is not None:
            with cached:
                body = await response.prepare(request)
                if request.transport is None or body is None:
                    raise ConnectionResetError("The client went away.")
                complete = await sendfile_chunked(
                    request.transport, cached, drain=body.drain, limit=cut_at, write_timeout=timeout
                )
                if not complete:
                    _cut_connection(request)
            return response
        async with contextlib.AsyncExitStack() as stack:
            writer = await cache.writer(download.id) if cache is not None else None
            if writer is not None:
                await stack.enter_async_context(writer)
            await response.prepare(request)
            if not await _stream_generated(request, response, download, cut_at, writer, timeout):
                _cut_connection(request)
                return response
            # The client has the whole body before the cache file is synced and published.
            async with asyncio.timeout(timeout):
                await response.write_eof()
            if writer is not None:
                await writer.commit()
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
            timeout,
        )
    return response


async def _stream_generated(
    request: web.Request,
    response: web.StreamResponse,
    download: DownloadSpec,
    cut_at: int | None,
    cache: CacheWriter | None,
    write_timeout: float | None,
) -> bool:
    """Send the generated body; returns False if the connection must be cut instead of ended.

    Raises TimeoutError if the client leaves a chunk untaken for `write_timeout` seconds.
    """
    sent = 0
    chunks = request.app[_POOL_KEY].stream(download)
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if cut_at is not None and sent + len(chunk) > cut_at:
                    async with asyncio.timeout(write_timeout):
                        await response.write(chunk[: cut_at - sent])
                    return False
                if cache is not None:
                    await cache.write(chunk)
                # `write` waits only when the transport holds over 64 KiB the kernel has not
                # taken, and then until it holds 16 KiB at most.
                async with asyncio.timeout(write_timeout):
                    await response.write(chunk)
                sent += len(chunk)
    except WorkerError as exc:
        logger.error("Cutting the stream of download %s: %s", download.id, exc)
        return False
    return True


def _default_workers() -> int:
    """One worker per CPU this process may run on (fewer than the machine's in a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def create_app(
    catalog: Catalog = REFERENCE_CATALOG,
    *,
    workers: int | None = None,
    cache_dir: Path | None = None,
    faults: FaultConfig | None = None,
    write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
) -> web.Application:
    """Build the export API application.

    `workers` generation processes (default: one per CPU available to this process) are started
    when the app starts and stopped when it is cleaned up. With `cache_dir`, complete bodies are
    cached there and later requests for them are served from disk, in large chunks that are not
    cut at line ends. `faults` makes the server misbehave on purpose. A data stream whose client
    leaves the next piece of the body untaken for `write_timeout` seconds (None: no limit) is
    cut off, and its generation job and cache file dropped. Starting the app raises
    CacheDirectoryError if the cache directory cannot be created or read, and WorkerError if the
    workers cannot be started.
    """
    size = workers if workers is not None else _default_workers()
    if size < 1:
        raise ValueError(f"workers must be at least 1, got {size}.")
    if write_timeout is not None and not write_timeout > 0:
        raise ValueError(f"write_timeout must be positive, got {write_timeout}.")
    app = web.Application(middlewares=[_json_errors, _inject_faults])
    app[_CATALOG_KEY] = catalog
    app[_FAULTS_KEY] = FaultInjector(faults or FaultConfig())
    app[_WRITE_TIMEOUT_KEY] = write_timeout
    if cache_dir is not None:
        cache = DiskCache(cache_dir)
        app[_CACHE_KEY] = cache
        app.cleanup_ctx.append(_cache_context(cache))

    async def pool_context(app: web.Application) -> AsyncIterator[None]:
        pool = WorkerPool(size)
        await pool.start()
        app[_POOL_KEY] = pool
        try:
            yield
        finally:
            await pool.stop()

    app.cleanup_ctx.append(pool_context)
    app.router.add_get("/api/export", _list_exports, allow_head=False)
    app.router.add_get("/api/export/{export_id}", _get_export, allow_head=False)
    # `[^/]+` rather than aiohttp's default `[^{}/]+`, so that a braced UUID gets an answer.
    download = "/api/export/{export_id}/{download_id:[^/]+}"
    app.router.add_get(download, _get_download, allow_head=False)
    app.router.add_get(f"{download}/data", _get_data, allow_head=False)
    return app


def _cache_context(
    cache: DiskCache,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        cache.prepare()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                cache.remove_temporaries()

    return context
