"""A download as a Dask task: what runs on a worker, and its progress at both ends.

`count_on_worker` does on a worker what the local orchestrator does for a download: it runs
`count_download` in an event loop of its own, with its own HTTP session and counting pool,
and returns the verified `DownloadResult` or raises. A task that Dask runs again, after the
worker running it died, starts from nothing, so no row is ever counted twice.

Progress crosses the cluster as Dask events: the task's `WorkerProgress` sends what it
received, counted and retried, a few times a second, and the client's `ClusterProgress` hands
that on to its `ProgressListener`. Dask is imported only on a worker, by the task itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ._download import StreamOptions, count_download
from ._http import ExportAPI, make_session
from ._metadata import DownloadInfo
from ._pool import CountingPool
from ._progress import NoProgress, ProgressListener, Retry
from ._rate import RateLimit
from ._results import DownloadResult
from ._retry import RetryPolicy

__all__ = ["ClusterProgress", "DownloadJob", "WorkerProgress", "count_on_worker"]

# How often a task tells the client how far it is: the display redraws 4 times a second.
EVENT_SECONDS = 0.25


@dataclass(frozen=True)
class DownloadJob:
    """What every task of a run shares, sent to the workers with each task."""

    server: str
    export_id: str
    policy: RetryPolicy
    options: StreamOptions
    timeout: float
    strict: bool = False
    threads: int | None = None
    limit_rate: float | None = None  # bytes per second, per worker process
    topic: str | None = None  # the Dask event topic of the run's progress

    def with_topic(self, topic: str) -> DownloadJob:
        return replace(self, topic=topic)


def count_on_worker(job: DownloadJob, info: DownloadInfo) -> DownloadResult:
    """The Dask task: one download's verified result, counted on the worker running this."""
    progress: ProgressListener = NoProgress()
    if job.topic is not None:
        from distributed import get_worker

        topic, worker = job.topic, get_worker()
        progress = WorkerProgress(lambda message: worker.log_event(topic, message), info.id)
    return asyncio.run(_count(job, info, progress))


async def _count(
    job: DownloadJob, info: DownloadInfo, progress: ProgressListener
) -> DownloadResult:
    async with (
        make_session(concurrency=1, timeout=job.timeout) as session,
        CountingPool(job.threads) as pool,
    ):
        try:
            return await count_download(
                ExportAPI(session, job.server),
                job.export_id,
                info,
                policy=job.policy,
                pool=pool,
                options=job.options,
                progress=progress,
                strict=job.strict,
                limit=process_limit(job.limit_rate),
            )
        finally:
            progress.finished()


_limits: dict[float, RateLimit] = {}
_limits_lock = threading.Lock()


def process_limit(rate: float | None) -> RateLimit | None:
    """The rate limit that every task of this worker process shares, as each machine has one
    link: its tasks run in threads of their own, each with an event loop of its own."""
    if rate is None:
        return None
    with _limits_lock:
        return _limits.setdefault(rate, RateLimit(rate))


@dataclass
class WorkerProgress(NoProgress):
    """A task's progress, sent as events: the bytes and rows since the last one, and retries."""

    send: Callable[[dict[str, Any]], None]
    download_id: str
    run: str = field(default_factory=lambda: uuid.uuid4().hex)  # this execution of the task
    _received: int = 0
    _counted: int = 0
    _retries: list[list[Any]] = field(default_factory=list)
    _sent_at: float = 0.0

    def download_started(self, download_id: str) -> None:
        self._send()  # at once: the client shows it in flight, and knows this run of it

    def received(self, download_id: str, nbytes: int) -> None:
        self._received += nbytes
        self._now_and_then()

    def counted(self, download_id: str, rows: int) -> None:
        self._counted += rows
        self._now_and_then()

    def retrying(self, retry: Retry) -> None:
        self._retries.append([retry.what, retry.reason, retry.delay, retry.rows, retry.nbytes])
        self.finished()

    def finished(self) -> None:
        """Sends what has not been sent yet."""
        if self._received or self._counted or self._retries:
            self._send()

    def _now_and_then(self) -> None:
        if time.monotonic() - self._sent_at >= EVENT_SECONDS:
            self._send()

    def _send(self) -> None:
        self.send(
            {
                "id": self.download_id,
                "run": self.run,
                "received": self._received,
                "counted": self._counted,
                "retries": self._retries,
            }
        )
        self._received = self._counted = 0
        self._retries = []
        self._sent_at = time.monotonic()


@dataclass
class _Running:
    run: str
    rows: int = 0
    nbytes: int = 0


class ClusterProgress:
    """Hands the tasks' progress events on to a listener, as a local run's would come.

    A download is done when its result reaches the client (`finished`), which also corrects
    what events were late to tell; events after that are dropped. A download whose task runs
    again (its worker died) has what it showed taken back, as a retry.
    """

    def __init__(self, listener: ProgressListener) -> None:
        self._listener = listener
        self._running: dict[str, _Running] = {}
        self._done: set[str] = set()

    def event(self, event: tuple[float, dict[str, Any]]) -> None:
        """A Dask event of the run's topic: (time, message)."""
        message = event[1]
        download_id: str = message["id"]
        if download_id in self._done:
            return
        running = self._started(download_id, message["run"])
        for what, reason, delay, rows, nbytes in message["retries"]:
            running.rows -= rows
            running.nbytes -= nbytes
            self._listener.retrying(Retry(what, reason, delay, download_id, rows, nbytes))
        self._add(running, download_id, message["received"], message["counted"])

    def finished(self, result: DownloadResult) -> None:
        """A download's result has come: what it shows is now exactly that."""
        download_id = result.download_id
        running = self._running.pop(download_id, None) or _Running("")
        if running.run == "":
            self._listener.download_started(download_id)
        self._add(running, download_id, result.bytes - running.nbytes, result.rows - running.rows)
        self._done.add(download_id)
        self._listener.download_finished(download_id)

    def _started(self, download_id: str, run: str) -> _Running:
        running = self._running.get(download_id)
        if running is None:
            self._listener.download_started(download_id)
        elif running.run != run:
            lost = Retry(
                f"download {download_id}",
                "the worker running it was lost; Dask runs it again",
                0.0,
                download_id,
                running.rows,
                running.nbytes,
            )
            self._listener.retrying(lost)
        else:
            return running
        running = self._running[download_id] = _Running(run)
        return running

    def _add(self, running: _Running, download_id: str, nbytes: int, rows: int) -> None:
        running.nbytes += nbytes
        running.rows += rows
        if nbytes or rows:
            self._listener.received(download_id, nbytes)
            # Even with no rows: a display redraws when rows are counted, not on every read.
            self._listener.counted(download_id, rows)
