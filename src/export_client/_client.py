"""The library's front door: an export server, its exports, and their counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TypeVar

import aiohttp

from ._cluster import ClusterAddress, count_on_cluster
from ._defaults import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_SERVER,
    DEFAULT_SPEED_LIMIT,
    DEFAULT_SPEED_TIME,
    DEFAULT_TIMEOUT,
)
from ._download import StreamOptions
from ._exceptions import ServerResponseError, ServerUnreachableError, UnknownExportError
from ._http import ExportAPI, check_server_url, make_session
from ._metadata import DownloadInfo
from ._orchestrator import Orchestrator, run_all
from ._pool import CountingPool
from ._progress import NoProgress, ProgressListener, Retry
from ._rate import RateLimit
from ._results import DownloadResult, ExportReport
from ._retry import GaveUp, Retryable, RetryPolicy, retrying
from ._source import ExportSource, Unreachable
from ._stats import Number, Statistics
from ._task import DownloadJob

__all__ = ["ExportClient", "count_export"]

T = TypeVar("T")


class ExportClient:
    """A client for one export server.

    Use it as an async context manager; over HTTP it owns one session::

        async with ExportClient("http://localhost:8000") as client:
            report = await client.count("demo")
        print(report.to_json().decode())

    `source` replaces HTTP with any `ExportSource` (an in-memory API in tests, say); `retry`
    says how failed requests and downloads are retried. With `stats`, each patient and event
    type gets count, mean, min, max, anomalies (outside `DEFAULT_NORMAL_RANGES`, which
    `normal_ranges` extends or overrides) and latency too. `limit_rate` caps the bytes per
    second read over all the downloads. With `cluster` (a Dask scheduler's address, `local`
    or `local:N`), each download is a task on the cluster's workers, which must reach the
    server themselves, each worker process with its own `limit_rate`.
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        source: ExportSource | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        speed_limit: float = DEFAULT_SPEED_LIMIT,
        speed_time: float = DEFAULT_SPEED_TIME,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        strict: bool = False,
        stats: bool = False,
        normal_ranges: Mapping[str, tuple[Number, Number]] | None = None,
        threads: int | None = None,
        limit_rate: float | None = None,
        cluster: str | None = None,
        progress: ProgressListener | None = None,
    ) -> None:
        check_server_url(server)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 < timeout < float("inf"):
            raise ValueError("timeout must be a positive number of seconds")
        if not 0 <= speed_limit < float("inf"):
            raise ValueError("speed_limit must be 0 (no floor) or more")
        if not 0 < speed_time < float("inf"):
            raise ValueError("speed_time must be a positive number of seconds")
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        if limit_rate is not None and not 1 <= limit_rate < float("inf"):
            raise ValueError("limit_rate must be at least 1 byte per second")
        if cluster is not None and source is not None:
            raise ValueError("a cluster's workers reach the server over HTTP: no source with it")
        self.server = server.rstrip("/")
        self.concurrency = concurrency
        self.policy = retry or RetryPolicy()
        self.timeout = timeout
        for event_type, (low, high) in (normal_ranges or {}).items():
            if low > high:
                raise ValueError(f"the normal range of {event_type!r} has low above high")
        self.options = StreamOptions(
            max_line_bytes=max_line_bytes,
            speed_limit=speed_limit,
            speed_time=speed_time,
            stats=Statistics.of(normal_ranges) if stats else None,
        )
        self.strict = strict
        self.threads = threads
        self.limit_rate = limit_rate
        self.cluster = ClusterAddress.parse(cluster) if cluster is not None else None
        if self.cluster is not None and not self.cluster.reaches(server):
            raise ValueError(f"{server} is on this machine's loopback, out of the workers' reach")
        self.progress: ProgressListener = progress or NoProgress()
        self._source = source
        self._session: aiohttp.ClientSession | None = None
        self._discovery_retries = 0

    async def __aenter__(self) -> ExportClient:
        if self._source is None:
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
    def source(self) -> ExportSource:
        """The export API this client talks to."""
        if self._source is not None:
            return self._source
        if self._session is None:
            raise RuntimeError("use ExportClient as an async context manager")
        return ExportAPI(self._session, self.server)

    async def export_ids(self) -> list[str]:
        """The ids of the exports the server offers."""
        return await self._discover(self.source.export_ids, "the export list")

    async def downloads(self, export_id: str) -> list[DownloadInfo]:
        """An export's downloads with their metadata, after checking the export exists."""
        known = await self.export_ids()
        if export_id not in known:
            raise UnknownExportError(export_id, known)
        source = self.source
        try:
            ids = await self._discover(
                lambda: source.download_ids(export_id), f"export {export_id!r}"
            )
        except UnknownExportError:
            raise UnknownExportError(export_id, known) from None
        if len(set(ids)) != len(ids):
            raise ServerResponseError(f"Export {export_id!r} lists a download more than once.")
        slots = asyncio.Semaphore(self.concurrency)

        async def info(download_id: str) -> DownloadInfo:
            async with slots:
                return await self._discover(
                    lambda: source.download_info(export_id, download_id),
                    f"the metadata of download {download_id}",
                )

        return await run_all(info(download_id) for download_id in ids)

    async def count(self, export_id: str) -> ExportReport:
        """Counts every row of an export per patient and event type, verified.

        Raises an `ExportClientError` rather than return anything partial.
        """
        started = time.perf_counter()
        retries_before = self._discovery_retries
        self.progress.discovering()
        try:
            downloads = await self.downloads(export_id)
            self.progress.started(downloads)
            results = await self._count_downloads(export_id, downloads)
        finally:
            self.progress.finished()
        return ExportReport.of(
            export_id,
            results,
            seconds=time.perf_counter() - started,
            discovery_retries=self._discovery_retries - retries_before,
        )

    async def _count_downloads(
        self, export_id: str, downloads: list[DownloadInfo]
    ) -> list[DownloadResult]:
        if self.cluster is not None:
            job = DownloadJob(
                self.server,
                export_id,
                self.policy,
                self.options,
                self.timeout,
                strict=self.strict,
                threads=self.threads,
                limit_rate=self.limit_rate,
            )
            return await count_on_cluster(
                self.cluster, job, downloads, progress=self.progress, connect_seconds=self.timeout
            )
        async with CountingPool(self.threads) as pool:
            return await Orchestrator(
                source=self.source,
                export_id=export_id,
                concurrency=self.concurrency,
                policy=self.policy,
                pool=pool,
                progress=self.progress,
                options=self.options,
                strict=self.strict,
                limit=RateLimit(self.limit_rate) if self.limit_rate is not None else None,
            ).run(downloads)

    async def _discover(self, request: Callable[[], Awaitable[T]], what: str) -> T:
        # Every failure worth retrying is retried alike, a refused connection included: a
        # server restarting during discovery is as survivable as one restarting mid-stream.
        def on_retry(error: Retryable, delay: float) -> None:
            self._discovery_retries += 1
            self.progress.retrying(Retry(what, str(error), delay))

        try:
            return await retrying(lambda _: request(), self.policy, on_retry=on_retry)
        except GaveUp as gave_up:
            if isinstance(gave_up.error, Unreachable):
                raise ServerUnreachableError(self.server, str(gave_up)) from gave_up.error
            raise ServerResponseError(f"Fetching {what} failed: {gave_up}.") from gave_up.error


def count_export(
    export_id: str,
    server: str = DEFAULT_SERVER,
    *,
    source: ExportSource | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    retry: RetryPolicy | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    speed_limit: float = DEFAULT_SPEED_LIMIT,
    speed_time: float = DEFAULT_SPEED_TIME,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    strict: bool = False,
    stats: bool = False,
    normal_ranges: Mapping[str, tuple[Number, Number]] | None = None,
    threads: int | None = None,
    limit_rate: float | None = None,
    cluster: str | None = None,
    progress: ProgressListener | None = None,
) -> ExportReport:
    """Counts an export from synchronous code; the options are those of `ExportClient`."""

    async def run() -> ExportReport:
        client = ExportClient(
            server,
            source=source,
            concurrency=concurrency,
            retry=retry,
            timeout=timeout,
            speed_limit=speed_limit,
            speed_time=speed_time,
            max_line_bytes=max_line_bytes,
            strict=strict,
            stats=stats,
            normal_ranges=normal_ranges,
            threads=threads,
            limit_rate=limit_rate,
            cluster=cluster,
            progress=progress,
        )
        async with client:
            return await client.count(export_id)

    return asyncio.run(run())
