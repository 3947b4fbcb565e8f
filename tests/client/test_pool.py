"""The counting pool: pieces of whole lines counted on threads, each where it lies, and the
hand-off of their counts to the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from export_client import _pool
from export_client._counting import BlockCount, count_block
from export_client._layout import CsvLayout
from export_client._lines import Piece
from export_client._pool import Counting, CountingPool

LAYOUT = CsvLayout(field_count=4, patient_index=0, event_type_index=2)
ROWS = [b"P00%d,2025-01-01T00:00:00Z,bp_sys,12%d\n" % (i % 3, i) for i in range(9)]


@pytest.mark.parametrize("cuts", [[9], [1, 9], [1, 2, 5, 9]])
async def test_pieces_count_as_their_lines_joined(cuts: list[int]) -> None:
    body = b"".join(ROWS)
    pieces: list[Piece] = []
    start = 0
    for cut in cuts:
        # Views of one chunk and bytes, as the splitter gives them.
        piece = b"".join(ROWS[start:cut])
        pieces.append(memoryview(piece) if len(pieces) % 2 else piece)
        start = cut
    async with CountingPool(2) as pool:
        counted = await pool.submit(pieces, LAYOUT)
    assert counted == count_block(body, LAYOUT)


async def test_submit_needs_the_context_manager() -> None:
    with pytest.raises(RuntimeError, match="context manager"):
        CountingPool(1).submit([ROWS[0]], LAYOUT)


class Gate:
    """count_block on the pool's threads, made to wait until `opened` and to note what it counts."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.counted: list[Piece] = []

    def count(self, piece: Piece, layout: CsvLayout, stats: object = None) -> BlockCount:
        self.entered.set()
        self.opened.wait(timeout=10)
        self.counted.append(piece)
        return count_block(piece, layout)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Gate:
    gate = Gate()
    monkeypatch.setattr(_pool, "count_block", gate.count)
    return gate


async def test_a_count_finished_before_it_is_awaited_is_taken_as_it_is() -> None:
    async with CountingPool(1) as pool:
        counting = pool.submit([ROWS[0]], LAYOUT)
        await asyncio.to_thread(_until_done, counting)
        assert counting.done
        assert await counting == count_block(ROWS[0], LAYOUT)


async def test_a_count_awaited_before_it_is_finished_wakes_its_task(gate: Gate) -> None:
    async with CountingPool(1) as pool:
        counting = pool.submit([ROWS[1]], LAYOUT)
        asyncio.get_running_loop().call_later(0.05, gate.opened.set)
        assert not counting.done
        assert await counting == count_block(ROWS[1], LAYOUT)


async def test_an_error_while_counting_is_raised_where_the_count_is_awaited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(piece: Piece, layout: CsvLayout, stats: object = None) -> BlockCount:
        raise MemoryError("no room")

    monkeypatch.setattr(_pool, "count_block", broken)
    async with CountingPool(2) as pool:
        with pytest.raises(MemoryError, match="no room"):
            await pool.submit([ROWS[0]], LAYOUT)


async def test_cancelled_and_unstarted_batches_are_never_counted(gate: Gate) -> None:
    async with CountingPool(1) as pool:
        pool.submit([ROWS[0]], LAYOUT)  # holds the one thread until the gate opens
        await asyncio.to_thread(gate.entered.wait, 10)  # taken off the queue: being counted
        pool.submit([ROWS[1]], LAYOUT).cancel()
        pool.submit([ROWS[2]], LAYOUT)  # still queued when the pool is left
        # Opens once the pool is being left, which waits for the batch being counted.
        threading.Timer(0.05, gate.opened.set).start()
    assert gate.counted == [ROWS[0]]


async def test_a_task_cancelled_while_it_awaits_a_count_leaves_the_pool_working(
    gate: Gate,
) -> None:
    async with CountingPool(1) as pool:
        waiting = asyncio.create_task(_awaited(pool.submit([ROWS[0]], LAYOUT)))
        await asyncio.sleep(0.01)
        waiting.cancel()
        gate.opened.set()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await pool.submit([ROWS[1]], LAYOUT) == count_block(ROWS[1], LAYOUT)


async def test_a_count_awaited_again_after_a_cancelled_await_is_taken(gate: Gate) -> None:
    async with CountingPool(1) as pool:
        counting = pool.submit([ROWS[0]], LAYOUT)
        first = asyncio.create_task(_awaited(counting))
        await asyncio.sleep(0.01)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first

        def finish() -> None:
            gate.opened.set()
            _until_done(counting)

        # The thread finishes between the second await's look at `done` and its lock: that
        # await must not wait on a waiter that nobody will wake.
        pool.lock = FinishFirst(pool.lock, finish)  # type: ignore[assignment]
        assert await asyncio.wait_for(_awaited(counting), 5) == count_block(ROWS[0], LAYOUT)


class FinishFirst:
    """A lock that, the first time this thread takes it, first runs `before`."""

    def __init__(self, lock: threading.Lock, before: Callable[[], None]) -> None:
        self._lock = lock
        self._before: Callable[[], None] | None = before
        self._thread = threading.current_thread()

    def __enter__(self) -> bool:
        if self._before is not None and threading.current_thread() is self._thread:
            before, self._before = self._before, None
            before()
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _until_done(counting: Counting) -> None:
    deadline = time.monotonic() + 10
    while not counting.done and time.monotonic() < deadline:
        time.sleep(0.001)


async def _awaited(counting: Counting) -> BlockCount:
    return await counting
