"""Where blocks are counted: a small pool of threads beside the event loop.

The compiled core releases the GIL while it scans a block, so the threads count on every core
while the event loop keeps reading the network, with no copy, no pickling and no process. The
pure-Python core holds the GIL, so its threads take turns with the event loop: correct, on one
core's worth of CPU.

The hand-off is written here rather than taken from `loop.run_in_executor`: that costs, per
block, a `concurrent.futures.Future` with its condition variable, an asyncio future chained to
it by callbacks on both threads, and a wake-up of the event loop through its self-pipe, all
holding the GIL; a run of `small` hands over about 1,200 blocks, and that Python was about
a seventh of the event loop's work (README, Performance: "What was tuned"). Here a block is a
job on a queue, and the loop is woken only when it waits for a count that is not ready yet,
which, with blocks counted faster than the network brings them, is rare.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Generator, Sequence
from types import TracebackType

from ._counting import BlockCount, count_block
from ._defaults import available_cores
from ._layout import CsvLayout
from ._lines import Piece
from ._stats import Statistics

__all__ = ["Counting", "CountingPool"]


class Counting:
    """A batch of pieces being counted on the pool: await it for its `BlockCount`."""

    __slots__ = ("_error", "_pieces", "_pool", "_result", "_waiter", "cancelled", "done")

    def __init__(self, pool: CountingPool, pieces: Sequence[Piece]) -> None:
        self._pool = pool
        self._pieces: Sequence[Piece] | None = pieces
        self._result: BlockCount | None = None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.done = False
        self.cancelled = False

    def cancel(self) -> None:
        """Drops the batch if no thread has started it; its count is never wanted."""
        self.cancelled = True

    def __await__(self) -> Generator[object, None, BlockCount]:
        if not self.done:
            waiter = self._pool.loop.create_future()
            with self._pool.lock:
                # Under the lock the thread sees the waiter or we see it done, never neither.
                if not self.done:
                    self._waiter = waiter
            # This await's own waiter: one left by an earlier await that was cancelled is
            # not the one the thread will wake.
            if self._waiter is waiter:
                yield from waiter.__await__()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _count(self, layout: CsvLayout, stats: Statistics | None) -> asyncio.Future[None] | None:
        """Counts the batch on this thread; returns the waiter to wake, if the loop waits."""
        pieces, self._pieces = self._pieces, None  # the chunks go as soon as they are counted
        assert pieces is not None
        try:
            total = count_block(pieces[0], layout, stats)
            for piece in pieces[1:]:
                total.merge(count_block(piece, layout, stats))
            self._result = total
        except BaseException as error:  # handed to whoever awaits the count
            self._error = error
        with self._pool.lock:
            self.done = True
            return self._waiter


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # the waiting task may have been cancelled meanwhile
        waiter.set_result(None)


class CountingPool:
    """Counts blocks of complete lines on `threads` threads; use it as an async context manager."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or available_cores()
        if self.threads < 1:
            raise ValueError("a counting pool needs at least one thread")
        self.lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Counting, CsvLayout, Statistics | None] | None]
        self._jobs = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("use CountingPool as an async context manager")
        return self._loop

    async def __aenter__(self) -> CountingPool:
        self._loop = asyncio.get_running_loop()
        self._workers = [
            threading.Thread(target=self._work, name=f"export-count_{number}", daemon=True)
            for number in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Batches not started are dropped; one being counted takes milliseconds at most.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join()
        self._workers = []
        self._loop = None

    def submit(
        self, pieces: Sequence[Piece], layout: CsvLayout, stats: Statistics | None = None
    ) -> Counting:
        """Starts counting `pieces` (blocks of whole lines; with `stats`, their statistics
        too); await the result for their count."""
        counting = Counting(self, pieces)
        if self._loop is None:
            raise RuntimeError("use CountingPool as an async context manager")
        self._jobs.put((counting, layout, stats))
        return counting

    def _work(self) -> None:
        loop = self.loop
        while (job := self._jobs.get()) is not None:
            counting, layout, stats = job
            if counting.cancelled:
                continue
            waiter = counting._count(layout, stats)
            if waiter is not None:
                # A closed loop (RuntimeError) has nobody waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_wake, waiter)
