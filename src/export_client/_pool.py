"""Where blocks are counted: a small pool of threads beside the event loop.

The compiled core releases the GIL while it scans a block, so the threads count on every core
while the event loop keeps reading the network, with no copy, no pickling and no process. The
pure-Python core holds the GIL, so its threads take turns with the event loop: correct, on one
core's worth of CPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from ._counting import BlockCount, count_block
from ._defaults import available_cores
from ._layout import CsvLayout
from ._lines import Piece
from ._stats import Statistics

__all__ = ["CountingPool"]


class CountingPool:
    """Counts blocks of complete lines on `threads` threads; use it as an async context manager."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or available_cores()
        if self.threads < 1:
            raise ValueError("a counting pool needs at least one thread")
        self._executor: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> CountingPool:
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="export-count")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # Blocks not started are dropped; one being counted takes milliseconds at most.
            executor.shutdown(wait=True, cancel_futures=True)

    def submit(
        self, pieces: Sequence[Piece], layout: CsvLayout, stats: Statistics | None = None
    ) -> asyncio.Future[BlockCount]:
        """Starts counting `pieces` (blocks of whole lines; with `stats`, their statistics
        too); the future gives their count."""
        if self._executor is None:
            raise RuntimeError("use CountingPool as an async context manager")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, _count_pieces, pieces, layout, stats)


def _count_pieces(
    pieces: Sequence[Piece], layout: CsvLayout, stats: Statistics | None
) -> BlockCount:
    """The count of pieces of whole lines, each counted where it lies."""
    total = count_block(pieces[0], layout, stats)
    for piece in pieces[1:]:
        total.merge(count_block(piece, layout, stats))
    return total
