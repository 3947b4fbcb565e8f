"""Schedules the downloads of an export: at most `concurrency` at a time, each retried.

The orchestrator only schedules: each download runs under a semaphore as `count_download`,
the same work a Dask task does for a download on a cluster (`_cluster.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ._download import StreamOptions, count_download
from ._metadata import DownloadInfo
from ._pool import CountingPool
from ._progress import ProgressListener
from ._rate import RateLimit
from ._results import DownloadResult
from ._retry import RetryPolicy
from ._source import ExportSource

__all__ = ["Orchestrator", "run_all"]

T = TypeVar("T")


async def run_all(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Runs coroutines concurrently; the first failure cancels the rest and is raised as is."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coroutine) for coroutine in coroutines]
    except BaseExceptionGroup as errors:
        # Callers handle one error, the first; the others are its consequences.
        raise errors.exceptions[0] from None
    return [task.result() for task in tasks]


@dataclass
class Orchestrator:
    """Counts every download of an export, at most `concurrency` at a time.

    Each attempt at a download counts into its own counts, so a retry never counts a row
    twice; a download is done only when its body matches its metadata.
    """

    source: ExportSource
    export_id: str
    concurrency: int
    policy: RetryPolicy
    pool: CountingPool
    progress: ProgressListener
    options: StreamOptions
    strict: bool = False
    limit: RateLimit | None = None  # one for all the downloads: --limit-rate

    async def run(self, downloads: Sequence[DownloadInfo]) -> list[DownloadResult]:
        """The downloads' results, in the given order; the first failure cancels the rest."""
        slots = asyncio.Semaphore(self.concurrency)
        return await run_all(self._count(info, slots) for info in downloads)

    async def _count(self, info: DownloadInfo, slots: asyncio.Semaphore) -> DownloadResult:
        async with slots:
            return await count_download(
                self.source,
                self.export_id,
                info,
                policy=self.policy,
                pool=self.pool,
                options=self.options,
                progress=self.progress,
                strict=self.strict,
                limit=self.limit,
            )
