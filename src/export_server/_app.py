"""The aiohttp application: the routes of the export API, its errors and its injected faults."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from ._bodies import DEFAULT_WRITE_TIMEOUT, BodySender
from ._cache import DiskCache
from ._catalog import REFERENCE_CATALOG, Catalog, DownloadSpec
from ._faults import FaultConfig, FaultInjector, RequestFaults
from ._pool import WorkerPool

__all__ = ["MAX_WORKERS", "create_app"]

# Each worker is an interpreter of its own: many more than the cores only share them, and a
# mistyped count must not start processes without end.
MAX_WORKERS = 256

_CATALOG_KEY = web.AppKey("catalog", Catalog)
_FAULTS_KEY = web.AppKey("faults", FaultInjector)
_BODIES_KEY = web.AppKey("bodies", BodySender)
_REQUEST_FAULTS = web.RequestKey("faults", RequestFaults)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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


async def _get_data(request: web.Request) -> web.StreamResponse:
    download = _download(request)
    faults = request.get(_REQUEST_FAULTS)
    cut_fraction = faults.cut_fraction if faults is not None and faults.cut else None
    return await request.app[_BODIES_KEY].send(request, download, cut_fraction=cut_fraction)


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
    if not 1 <= size <= MAX_WORKERS:
        raise ValueError(f"workers must be from 1 to {MAX_WORKERS}, got {size}.")
    if write_timeout is not None and not (write_timeout > 0 and math.isfinite(write_timeout)):
        raise ValueError(f"write_timeout must be positive and finite, got {write_timeout}.")
    app = web.Application(middlewares=[_json_errors, _inject_faults])
    app[_CATALOG_KEY] = catalog
    app[_FAULTS_KEY] = FaultInjector(faults or FaultConfig())
    cache = DiskCache(cache_dir) if cache_dir is not None else None
    if cache is not None:
        app.cleanup_ctx.append(_cache_context(cache))

    async def pool_context(app: web.Application) -> AsyncIterator[None]:
        pool = WorkerPool(size)
        await pool.start()
        app[_BODIES_KEY] = BodySender(pool, cache, write_timeout=write_timeout)
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
