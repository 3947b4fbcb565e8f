"""Schedules the downloads of an export: at most `concurrency` at a time, each retried.

The orchestrator only schedules: each download runs under a semaphore as attempts
(`DownloadAttempt`) in the one retry loop (`retrying`), and the orchestrator says what a
download that failed means for the run (the `DownloadError` subclasses).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ._download import DownloadAttempt, StreamOptions, WrongBody
from ._exceptions import (
    CsvFormatError,
    DownloadFailedError,
    IncompleteDownloadError,
    MalformedDownloadError,
)
from ._metadata import DownloadInfo
from ._pool import CountingPool
from ._progress import ProgressListener, Retry
from ._results import DownloadResult
from ._retry import GaveUp, Retryable, RetryPolicy, retrying
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

    async def run(self, downloads: Sequence[DownloadInfo]) -> list[DownloadResult]:
        """The downloads' results, in the given order; the first failure cancels the rest."""
        slots = asyncio.Semaphore(self.concurrency)
        return await run_all(self._count(info, slots) for info in downloads)

    async def _count(self, info: DownloadInfo, slots: asyncio.Semaphore) -> DownloadResult:
        async with slots:
            self.progress.download_started(info.id)
            attempts: list[DownloadAttempt] = []

            async def attempt(number: int) -> DownloadResult:
                attempts.append(
                    DownloadAttempt(
                        self.source,
                        self.export_id,
                        info,
                        number=number,
                        pool=self.pool,
                        options=self.options,
                        progress=self.progress,
                    )
                )
                return await attempts[-1].run()

            def on_retry(error: Retryable, delay: float) -> None:
                failed = attempts[-1]
                self.progress.retrying(
                    Retry(
                        f"download {info.id}",
                        str(error),
                        delay,
                        info.id,
                        failed.counted,
                        failed.received,
                    )
                )

            try:
                result = await retrying(attempt, self.policy, on_retry=on_retry)
            except GaveUp as gave_up:
                failure = (
                    IncompleteDownloadError
                    if isinstance(gave_up.error, WrongBody)
                    else (DownloadFailedError)
                )
                raise failure(info.id, f"{gave_up}.") from gave_up.error
            except CsvFormatError as error:
                raise MalformedDownloadError(info.id, str(error)) from error
            if self.strict and result.malformed:
                example = result.malformed_examples[0] if result.malformed_examples else ""
                raise MalformedDownloadError(
                    info.id,
                    f"{result.malformed:,} malformed rows, which strict counting allows none of; "
                    f"the first: {example!r}.",
                )
            self.progress.download_finished(info.id)
            return result
