"""The library's front door: an export server, its exports, and their counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from ._exceptions import ServerResponseError, ServerUnreachableError, UnknownExportError
from ._http import ConnectError, ExportAPI, TransientError
from ._models import DownloadInfo, ExportReport
from ._orchestrator import Orchestrator, run_all
from ._pool import CountingPool
from ._progress import NoProgress, ProgressListener
from ._results import merge_counts
from ._retry import RetryPolicy

DEFAULT_SERVER = "http://localhost:8000"
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT = 60.0
# Below 1 KiB/s for 30 s: never on a healthy stream, even from a server that generates its
# data as it sends it (hundreds of KB/s per stream), always on one that drips.
DEFAULT_SPEED_LIMIT = 1024.0
DEFAULT_SPEED_TIME = 30.0

T = TypeVar("T")

# Downloads named one by one in a warning; the rest are summed up.
_LISTED_DOWNLOADS = 5


def check_server_url(url: str) -> None:
    """Raises ValueError unless `url` is an http:// or https:// URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")


def make_session(*, concurrency: int, timeout: float) -> aiohttp.ClientSession:
    """The HTTP session `ExportClient` streams with (the transfer-only benchmark uses it too)."""
    return aiohttp.ClientSession(
        # Connect and idle-read bounds only: a healthy stream of any length
        # must never time out, a stalled one must.
        timeout=aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout),
        connector=aiohttp.TCPConnector(limit=concurrency + 4),
        read_bufsize=1 << 17,
    )


class ExportClient:
    """A client for one export server.

    Use it as an async context manager; it owns one HTTP session::

        async with ExportClient("http://localhost:8000") as client:
            report = await client.count("demo")
        print(report.counts.to_json().decode())
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = DEFAULT_TIMEOUT,
        speed_limit: float = DEFAULT_SPEED_LIMIT,
        speed_time: float = DEFAULT_SPEED_TIME,
        strict: bool = False,
        threads: int | None = None,
        max_line_bytes: int = 1 << 20,
        progress: ProgressListener | None = None,
    ) -> None:
        check_server_url(server)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if speed_limit < 0:
            raise ValueError("speed_limit must be 0 (no floor) or more")
        if speed_time <= 0:
            raise ValueError("speed_time must be positive")
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        self.server = server.rstrip("/")
        self.concurrency = concurrency
        self.policy = RetryPolicy(retries=retries, base_delay=backoff)
        self.timeout = timeout
        self.speed_limit = speed_limit
        self.speed_time = speed_time
        self.strict = strict
        self.threads = threads
        self.max_line_bytes = max_line_bytes
        self.progress: ProgressListener = progress or NoProgress()
        self._session: aiohttp.ClientSession | None = None
        self._discovery_retries = 0

    async def __aenter__(self) -> ExportClient:
        self._session = make_session(concurrency=self.concurrency, timeout=self.timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def api(self) -> ExportAPI:
        if self._session is None:
            raise RuntimeError("use ExportClient as an async context manager")
        return ExportAPI(self._session, self.server)

    async def export_ids(self) -> list[str]:
        """The ids of the exports the server offers."""
        return await self._retrying(self.api.export_ids, what="the export list")

    async def downloads(self, export_id: str) -> list[DownloadInfo]:
        """An export's downloads with their metadata, after checking the export exists."""
        known = await self.export_ids()
        if export_id not in known:
            raise UnknownExportError(export_id, known)
        api = self.api
        try:
            ids = await self._retrying(
                lambda: api.download_ids(export_id), what=f"export {export_id!r}"
            )
        except UnknownExportError:
            raise UnknownExportError(export_id, known) from None
        if len(set(ids)) != len(ids):
            raise ServerResponseError(f"Export {export_id!r} lists a download more than once.")
        slots = asyncio.Semaphore(self.concurrency)

        async def info(download_id: str) -> DownloadInfo:
            async with slots:
                return await self._retrying(
                    lambda: api.download_info(export_id, download_id),
                    what=f"the metadata of download {download_id}",
                )

        return await run_all(info(download_id) for download_id in ids)

    async def count(self, export_id: str) -> ExportReport:
        """Counts every row of an export per patient and event type, verified.

        Raises an `ExportClientError` rather than return anything partial.
        """
        started = time.perf_counter()
        retries_before = self._discovery_retries
        downloads = await self.downloads(export_id)
        discovery_retries = self._discovery_retries - retries_before
        self.progress.started(downloads)
        try:
            async with CountingPool(self.threads) as pool:
                orchestrator = Orchestrator(
                    api=self.api,
                    export_id=export_id,
                    concurrency=self.concurrency,
                    policy=self.policy,
                    pool=pool,
                    progress=self.progress,
                    strict=self.strict,
                    max_line_bytes=self.max_line_bytes,
                    speed_limit=self.speed_limit,
                    speed_time=self.speed_time,
                )
                counted = await orchestrator.run(downloads)
        finally:
            self.progress.finished()
        reports = tuple(item.report for item in counted)
        warnings = []
        for report in reports:
            if report.unexpected_patients:
                warnings.append(
                    f"download {report.download_id} has patients its metadata does not list: "
                    + ", ".join(report.unexpected_patients)
                )
            if report.unexpected_event_types:
                warnings.append(
                    f"download {report.download_id} has event types its metadata does not "
                    "list: " + ", ".join(report.unexpected_event_types)
                )
        malformed = [report for report in reports if report.malformed]
        if malformed:
            total = sum(report.malformed for report in malformed)
            where = ", ".join(
                f"{report.malformed:,} in download {report.download_id}"
                for report in malformed[:_LISTED_DOWNLOADS]
            )
            if len(malformed) > _LISTED_DOWNLOADS:
                where += f" and {sum(r.malformed for r in malformed[_LISTED_DOWNLOADS:]):,} in "
                where += f"{len(malformed) - _LISTED_DOWNLOADS} more downloads"
            warnings.append(
                f"{total:,} malformed row{'s were' if total != 1 else ' was'} not counted: {where}"
            )
        return ExportReport(
            export_id=export_id,
            counts=merge_counts(item.count for item in counted),
            downloads=reports,
            seconds=time.perf_counter() - started,
            warnings=tuple(warnings),
            discovery_retries=discovery_retries,
        )

    async def _retrying(self, request: Callable[[], Awaitable[T]], *, what: str) -> T:
        # Every failure worth retrying is retried alike, a refused connection included: a
        # server restarting during discovery is as survivable as one restarting mid-stream.
        for attempt in range(1, self.policy.attempts + 1):
            try:
                return await request()
            except TransientError as error:
                if attempt == self.policy.attempts:
                    if isinstance(error, ConnectError):
                        raise ServerUnreachableError(
                            self.server, f"{error}; {_attempts(attempt)}"
                        ) from error
                    raise ServerResponseError(
                        f"Fetching {what} failed after {_attempts(attempt)}: {error}"
                    ) from error
                self._discovery_retries += 1
                delay = self.policy.delay(attempt, retry_after=error.retry_after)
                self.progress.request_retrying(what, str(error), delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt either returns or raises")


def _attempts(count: int) -> str:
    return f"{count} attempt{'s' if count != 1 else ''}"


def count_export(export_id: str, server: str = DEFAULT_SERVER, **options: Any) -> ExportReport:
    """Counts an export from synchronous code; `options` are those of `ExportClient`."""

    async def run() -> ExportReport:
        async with ExportClient(server, **options) as client:
            return await client.count(export_id)

    return asyncio.run(run())
