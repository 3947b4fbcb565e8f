"""Where blocks of complete lines are counted: in the event loop's thread, or in a pool."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Awaitable
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol

from ._counting import BlockCount, CsvLayout, count_block


class BlockCounting(Protocol):
    """Counts a block of complete lines, now or later."""

    def count(self, block: bytes, layout: CsvLayout) -> Awaitable[BlockCount]: ...


class InlineCounting:
    """Counts each block at once, in the calling thread."""

    def count(self, block: bytes, layout: CsvLayout) -> Awaitable[BlockCount]:
        future: asyncio.Future[BlockCount] = asyncio.get_running_loop().create_future()
        future.set_result(count_block(block, layout))
        return future


class PoolCounting:
    """Counts blocks in worker processes, so that counting uses every core.

    Blocks go to the workers as bytes and come back as small `BlockCount`s; the
    per-download counters, verification and retries stay in the event loop.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        # Forking a process that runs an event loop and resolver threads is unsafe;
        # a fresh interpreter per worker costs a fraction of a second, once.
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(self.workers, mp_context=context)

    def count(self, block: bytes, layout: CsvLayout) -> Awaitable[BlockCount]:
        return asyncio.get_running_loop().run_in_executor(self._pool, count_block, block, layout)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
