"""Schedules the downloads of an export: bounded concurrency, verification, retries."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ._counting import BlockCount, DownloadCounter
from ._exceptions import (
    CsvFormatError,
    DownloadFailedError,
    IncompleteDownloadError,
    MalformedDownloadError,
)
from ._http import ExportAPI, TransientError
from ._lines import Piece
from ._models import DownloadInfo, DownloadReport
from ._pool import CountingPool
from ._progress import ProgressListener
from ._results import DownloadCount
from ._retry import RetryPolicy

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


@dataclass(frozen=True)
class CountedDownload:
    """A download's verified counts and the report of how they were made."""

    count: DownloadCount
    report: DownloadReport


@dataclass
class _Attempt:
    """One try at a download: a fresh counter, and what it has taken in so far."""

    counter: DownloadCounter
    received: int = 0
    counted: int = 0


class _WrongBody(Exception):
    """An attempt's body is not the one the metadata announces: cut short, or too long."""


# A body may hold blank lines, which are not rows, but not without bound: at most as many as
# the rows announced, and never fewer than this many.
_BLANK_LINES_FLOOR = 1000


@dataclass
class Orchestrator:
    """Counts every download of an export, at most `concurrency` at a time.

    Each attempt at a download gets a fresh counter, so a retry never counts a row
    twice; a download is done only when its rows match its metadata.
    """

    api: ExportAPI
    export_id: str
    concurrency: int
    policy: RetryPolicy
    pool: CountingPool
    progress: ProgressListener
    strict: bool = False
    max_line_bytes: int = 1 << 20
    speed_limit: float = 0.0
    speed_time: float = 30.0
    block_bytes: int = 1 << 17
    max_pending_blocks: int = 2

    async def run(self, downloads: Sequence[DownloadInfo]) -> list[CountedDownload]:
        """The downloads' counts, in the given order; the first failure cancels the rest."""
        slots = asyncio.Semaphore(self.concurrency)
        return await run_all(self._count(info, slots) for info in downloads)

    async def _count(self, info: DownloadInfo, slots: asyncio.Semaphore) -> CountedDownload:
        async with slots:
            self.progress.download_started(info.id)
            for attempt in range(1, self.policy.attempts + 1):
                current = _Attempt(DownloadCounter(max_line_bytes=self.max_line_bytes))
                try:
                    await self._stream(info, current)
                    count = current.counter.result()
                    if count.rows != info.rows:
                        raise _WrongBody(
                            f"the body held {count.rows:,} rows, "
                            f"the metadata announces {info.rows:,}"
                        )
                except CsvFormatError as error:
                    raise MalformedDownloadError(info.id, str(error)) from error
                except (TransientError, _WrongBody) as error:
                    if attempt == self.policy.attempts:
                        raise self._failure(info, error, attempt) from error
                    retry_after = error.retry_after if isinstance(error, TransientError) else None
                    delay = self.policy.delay(attempt, retry_after=retry_after)
                    self.progress.retrying(
                        info.id, str(error), delay, current.counted, current.received
                    )
                    await asyncio.sleep(delay)
                    continue
                self.progress.download_finished(info.id)
                return CountedDownload(count, self._report(info, count, current.received, attempt))
        raise AssertionError("unreachable: the last attempt either returns or raises")

    async def _stream(self, info: DownloadInfo, current: _Attempt) -> None:
        pending: deque[asyncio.Future[BlockCount]] = deque()
        batch: list[Piece] = []
        batched = 0
        try:
            async with self.api.open_data(self.export_id, info.id) as stream:
                chunks = stream.chunks(speed_limit=self.speed_limit, speed_time=self.speed_time)
                async for chunk in chunks:
                    current.received += len(chunk)
                    self.progress.received(info.id, len(chunk))
                    for piece in current.counter.split(chunk):
                        batch.append(piece)
                        batched += len(piece)
                    # Counting per network read would pay the per-block overhead
                    # thousands of times; batching to `block_bytes` keeps it negligible.
                    if batched >= self.block_bytes:
                        await self._submit(info, current, batch, pending)
                        batch = []
                        batched = 0
            if batch:
                await self._submit(info, current, batch, pending)
            while pending:
                self._add(info, current, await pending.popleft())
            current.counter.finish()
            self._check_length(info, current.counter)
            if current.counter.incomplete:
                raise _WrongBody(current.counter.incomplete)
        finally:
            for block in pending:
                block.cancel()
                # A block counted before the attempt failed must not log its error as unread.
                block.add_done_callback(_mark_read)

    async def _submit(
        self,
        info: DownloadInfo,
        current: _Attempt,
        batch: list[Piece],
        pending: deque[asyncio.Future[BlockCount]],
    ) -> None:
        layout = current.counter.layout
        assert layout is not None, "split() returns data lines only after the header"
        # One large piece is counted where it lies; several small ones are cheaper to join
        # than to count one by one.
        block = batch[0] if len(batch) == 1 else b"".join(batch)
        pending.append(self.pool.submit(block, layout))
        # A bounded queue of blocks in flight keeps memory flat however fast the
        # network is compared with the counting.
        while len(pending) > self.max_pending_blocks:
            self._add(info, current, await pending.popleft())

    def _add(self, info: DownloadInfo, current: _Attempt, block: BlockCount) -> None:
        current.counter.add(block)
        current.counted += block.rows
        self.progress.counted(info.id, block.rows)
        self._check_length(info, current.counter)

    def _check_length(self, info: DownloadInfo, counter: DownloadCounter) -> None:
        """Ends an attempt as soon as its body is longer than announced: it may never end."""
        if counter.rows > info.rows:
            raise _WrongBody(
                f"the body holds more than the {info.rows:,} rows its metadata announces"
            )
        allowed = max(info.rows, _BLANK_LINES_FLOOR)
        if counter.blank_lines > allowed:
            raise _WrongBody(
                f"the body holds more than {allowed:,} blank lines, for "
                f"{info.rows:,} rows announced"
            )

    def _failure(self, info: DownloadInfo, error: Exception, attempts: int) -> Exception:
        tries = f"after {attempts} attempt{'s' if attempts > 1 else ''}"
        if isinstance(error, _WrongBody):
            return IncompleteDownloadError(info.id, f"{error} ({tries}).")
        return DownloadFailedError(info.id, f"{error} ({tries}).")

    def _report(
        self, info: DownloadInfo, count: DownloadCount, nbytes: int, attempts: int
    ) -> DownloadReport:
        if self.strict and count.malformed:
            example = count.malformed_examples[0] if count.malformed_examples else ""
            raise MalformedDownloadError(
                info.id,
                f"{count.malformed:,} malformed rows (--strict), the first: {example!r}.",
            )
        patients = {patient for patient, _ in count.pairs}
        event_types = {event_type for _, event_type in count.pairs}
        return DownloadReport(
            download_id=info.id,
            rows=count.rows,
            bytes=nbytes,
            attempts=attempts,
            malformed=count.malformed,
            malformed_examples=count.malformed_examples,
            unexpected_patients=tuple(sorted(patients - set(info.patients))),
            unexpected_event_types=tuple(sorted(event_types - set(info.event_types))),
        )


def _mark_read(future: asyncio.Future[BlockCount]) -> None:
    if not future.cancelled():
        future.exception()
