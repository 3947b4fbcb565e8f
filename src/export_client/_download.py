"""One download: its attempts in the retry loop, and what a download that failed means.

`count_download` is the whole of the work on one download, the same in the local orchestrator
and in a Dask task: attempts (`DownloadAttempt`) in the one retry loop (`retrying`), and a
download that cannot be counted raised as one of the `DownloadError` subclasses.

An attempt streams the body from the source, cuts it into pieces of complete records
(`BodyReader`), batches them into blocks of at least `block_bytes`, hands each batch to the
counting pool and merges the counts as they come back, with at most `pending_blocks` in
flight. At the end it counts the last record and verifies the body against the metadata. A
body that is not the one announced raises `WrongBody`, which the retry loop retries.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ._body import BodyReader, count_end
from ._counting import BlockCount
from ._defaults import (
    BLANK_LINES_FLOOR,
    BLOCK_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_SPEED_LIMIT,
    DEFAULT_SPEED_TIME,
    PENDING_BLOCKS,
)
from ._exceptions import (
    CsvFormatError,
    DownloadFailedError,
    IncompleteDownloadError,
    MalformedDownloadError,
)
from ._lines import Piece
from ._metadata import DownloadInfo
from ._pool import Counting, CountingPool
from ._progress import ProgressListener, Retry
from ._rate import RateLimit
from ._results import DownloadResult
from ._retry import GaveUp, Retryable, RetryPolicy, retrying
from ._source import ExportSource
from ._stats import Statistics

__all__ = ["DownloadAttempt", "StreamOptions", "WrongBody", "count_download"]


class WrongBody(Retryable):
    """The body is not the one its metadata announces: cut short, or too long."""


@dataclass(frozen=True)
class StreamOptions:
    """How a body is read: its bounds, and the size of the blocks it is counted in."""

    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    speed_limit: float = DEFAULT_SPEED_LIMIT
    speed_time: float = DEFAULT_SPEED_TIME
    block_bytes: int = BLOCK_BYTES
    pending_blocks: int = PENDING_BLOCKS
    stats: Statistics | None = None  # statistics too, not only counts


async def count_download(
    source: ExportSource,
    export_id: str,
    info: DownloadInfo,
    *,
    policy: RetryPolicy,
    pool: CountingPool,
    options: StreamOptions,
    progress: ProgressListener,
    strict: bool = False,
    limit: RateLimit | None = None,
) -> DownloadResult:
    """One download's verified result, each attempt counted afresh; a `DownloadError` if it
    cannot be counted completely (with `strict`, also for any malformed row)."""
    progress.download_started(info.id)
    attempts: list[DownloadAttempt] = []

    async def attempt(number: int) -> DownloadResult:
        attempts.append(
            DownloadAttempt(
                source,
                export_id,
                info,
                number=number,
                pool=pool,
                options=options,
                progress=progress,
                limit=limit,
            )
        )
        return await attempts[-1].run()

    def on_retry(error: Retryable, delay: float) -> None:
        failed = attempts[-1]
        what = f"download {info.id}"
        progress.retrying(Retry(what, str(error), delay, info.id, failed.counted, failed.received))

    try:
        result = await retrying(attempt, policy, on_retry=on_retry)
    except GaveUp as gave_up:
        failure = (
            IncompleteDownloadError if isinstance(gave_up.error, WrongBody) else DownloadFailedError
        )
        raise failure(info.id, f"{gave_up}.") from gave_up.error
    except CsvFormatError as error:
        raise MalformedDownloadError(info.id, str(error)) from error
    if strict and result.malformed:
        example = result.malformed_examples[0] if result.malformed_examples else ""
        raise MalformedDownloadError(
            info.id,
            f"{result.malformed:,} malformed rows, which strict counting allows none of; "
            f"the first: {example!r}.",
        )
    progress.download_finished(info.id)
    return result


class DownloadAttempt:
    """One try at one download, into counts of its own, so that a retry never counts twice.

    `received` and `counted` are its bytes and rows so far, which a failed attempt's caller
    takes back from the progress shown.
    """

    def __init__(
        self,
        source: ExportSource,
        export_id: str,
        info: DownloadInfo,
        *,
        number: int,
        pool: CountingPool,
        options: StreamOptions,
        progress: ProgressListener,
        limit: RateLimit | None = None,
    ) -> None:
        self.info = info
        self.number = number
        self.received = 0
        self.counted = 0
        self._source = source
        self._export_id = export_id
        self._pool = pool
        self._options = options
        self._progress = progress
        self._limit = limit
        self._reader = BodyReader(max_line_bytes=options.max_line_bytes, stats=options.stats)
        self._total = BlockCount()
        self._pending: deque[Counting] = deque()

    async def run(self) -> DownloadResult:
        """The download's verified result; WrongBody or another `Retryable` if it failed."""
        options = self._options
        batch: list[Piece] = []
        batched = 0
        try:
            async with self._source.open_data(self._export_id, self.info.id) as body:
                chunks = body.chunks(
                    speed_limit=options.speed_limit,
                    speed_time=options.speed_time,
                    limit=self._limit,
                )
                async for chunk in chunks:
                    self.received += len(chunk)
                    self._progress.received(self.info.id, len(chunk))
                    for piece in self._reader.feed(chunk):
                        batch.append(piece)
                        batched += len(piece)
                    # Counting per network read would pay the hand-off to a thread thousands
                    # of times; batching to `block_bytes` keeps it negligible.
                    if batched >= options.block_bytes:
                        await self._submit(batch)
                        batch, batched = [], 0
            if batch:
                await self._submit(batch)
            while self._pending:
                self._add(await self._pending.popleft())
            incomplete = count_end(self._reader, self._total)
        finally:
            for block in self._pending:
                block.cancel()
        self._check_length()
        if incomplete:
            raise WrongBody(incomplete)
        if self._total.rows != self.info.rows:
            raise WrongBody(
                f"the body held {self._total.rows:,} rows, "
                f"the metadata announces {self.info.rows:,}"
            )
        return DownloadResult.of(self.info, self._total, nbytes=self.received, attempts=self.number)

    async def _submit(self, batch: list[Piece]) -> None:
        layout = self._reader.layout
        assert layout is not None, "data records come only after the header"
        # The pieces are counted where they lie, one by one, on the pool's thread: joining
        # them into one block would copy nearly every byte on the event loop, holding the GIL
        # (a chunk's records usually come as a joined line and a view of the rest), where the
        # one line costs a few microseconds to count on its own.
        self._pending.append(self._pool.submit(batch, layout, self._options.stats))
        # A bounded queue of blocks in flight keeps memory flat however fast the network is
        # compared with the counting.
        while len(self._pending) > self._options.pending_blocks:
            self._add(await self._pending.popleft())

    def _add(self, block: BlockCount) -> None:
        self._total.merge(block)
        self.counted += block.rows
        self._progress.counted(self.info.id, block.rows)
        self._check_length()

    def _check_length(self) -> None:
        """Ends the attempt as soon as its body is longer than announced: it may never end."""
        rows = self.info.rows
        if self._total.rows > rows:
            raise WrongBody(f"the body holds more than the {rows:,} rows its metadata announces")
        allowed = max(rows, BLANK_LINES_FLOOR)
        if self._total.blank_lines > allowed:
            raise WrongBody(
                f"the body holds more than {allowed:,} blank lines, for {rows:,} rows announced"
            )
