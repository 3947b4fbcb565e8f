"""Where blocks of complete lines are counted: in the event loop's thread, or in worker processes.

The workers are plain processes, each on one end of a socket pair. A block travels as a small
header and its raw bytes (no pickling, no executor threads contending for the GIL); the
worker's `BlockCount` comes back pickled, which is cheap since it holds a few dozen pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from ._counting import BlockCount, CsvLayout, count_block
from ._exceptions import ExportClientError
from ._worker import REPLY, REQUEST

_SOCKET_BUFFER_BYTES = 4 << 20


class CountingWorkerError(ExportClientError):
    """A counting worker process stopped before it answered."""


class BlockCounting(Protocol):
    """Counts blocks of complete lines; an async context manager.

    `submit` returns once the block is taken (it may wait for room, which is what keeps
    memory flat); the awaitable it returns gives the block's count.
    """

    async def __aenter__(self) -> BlockCounting: ...
    async def __aexit__(self, *exc_info: object) -> None: ...
    async def submit(self, block: bytes, layout: CsvLayout) -> Awaitable[BlockCount]: ...


class InlineCounting:
    """Counts each block at once, in the calling thread."""

    async def __aenter__(self) -> InlineCounting:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    async def submit(self, block: bytes, layout: CsvLayout) -> Awaitable[BlockCount]:
        future: asyncio.Future[BlockCount] = asyncio.get_running_loop().create_future()
        future.set_result(count_block(block, layout))
        return future


class PoolCounting:
    """Counts blocks in worker processes, so that counting uses every core.

    Use it as an async context manager; it starts the workers on entry and stops them on
    exit. With `inline_until_ready`, blocks that arrive while the workers are still starting
    are counted inline, so starting them never holds a download up.
    """

    def __init__(
        self, workers: int | None = None, *, depth: int = 2, inline_until_ready: bool = False
    ) -> None:
        self.size = workers or os.cpu_count() or 1
        # Two blocks per worker: one being counted, one arriving; more would only hold memory.
        self._room = asyncio.Semaphore(self.size * depth)
        self._inline_until_ready = inline_until_ready
        self._workers: list[_Worker] = []
        self._starting: asyncio.Task[list[_Worker]] | None = None
        self._inline = InlineCounting()

    async def __aenter__(self) -> PoolCounting:
        self._starting = asyncio.create_task(self._start())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        starting, self._starting = self._starting, None
        if starting is not None:
            # Process start-up cannot be interrupted; let it finish, then stop what started.
            await asyncio.wait([starting])
            if not starting.cancelled():
                starting.exception()  # reported by submit() if anyone asked; not twice
        await asyncio.gather(*(worker.stop() for worker in self._workers))
        self._workers = []

    async def submit(self, block: bytes, layout: CsvLayout) -> Awaitable[BlockCount]:
        if not self._workers:
            if self._starting is None:
                raise RuntimeError("use PoolCounting as an async context manager")
            if self._inline_until_ready and not self._starting.done():
                return await self._inline.submit(block, layout)
            await self._starting  # raises CountingWorkerError if the workers did not start
        await self._room.acquire()
        # With fewer blocks out than room for them, the least loaded worker has room.
        worker = min(self._workers, key=lambda candidate: len(candidate.pending))
        return await worker.submit(block, layout)

    async def _start(self) -> list[_Worker]:
        started = await asyncio.gather(
            *(_Worker.start(self._room.release) for _ in range(self.size)),
            return_exceptions=True,
        )
        workers = [worker for worker in started if isinstance(worker, _Worker)]
        failures = [error for error in started if isinstance(error, BaseException)]
        if failures:
            await asyncio.gather(*(worker.stop() for worker in workers))
            raise CountingWorkerError(
                f"The counting workers could not start: {failures[0]}"
            ) from failures[0]
        self._workers = workers
        return workers


class AdaptiveCounting:
    """Counts inline while that keeps up with the network, in a `PoolCounting` when it does not.

    Sending a block to a worker costs the event loop a copy through the kernel, and the
    workers cost memory and start-up. Against a slow source (a server still generating its
    data) inline counting is idle most of the time and the pool would only add that cost,
    which on a shared machine comes out of the server's cores. So blocks go to the workers
    only while counting would take more than `share` of the event loop's time: measured
    directly while counting inline, and estimated from the input rate and the inline
    counting rate while the workers count. Counting is timed in CPU time, not wall time:
    on a busy machine (the server generating on the same cores) a descheduled count would
    otherwise look slow and send work to the pool, which only makes the machine busier.

    The workers start when the first block needs them, or on entry with `start_workers`:
    for an export known to be large, so that they are ready by the end of the first window
    instead of about 0.1 s after it, while blocks are counted inline.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        share: float = 0.5,
        window: float = 0.1,
        start_workers: bool = False,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._share = share
        self._window = window
        self.start_workers = start_workers
        self._inline = InlineCounting()
        self._pool: PoolCounting | None = None
        self._offloading = False
        self._capacity = 0.0  # bytes per CPU second that count_block reaches in this process
        self._window_start = time.perf_counter()
        self._window_bytes = 0
        self._window_counting = 0.0  # CPU seconds spent counting inline in this window

    @property
    def offloading(self) -> bool:
        """Whether blocks currently go to the worker processes."""
        return self._offloading

    async def __aenter__(self) -> AdaptiveCounting:
        if self.start_workers:
            await self._enter_pool()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            await self._pool.__aexit__(*exc_info)
            self._pool = None

    async def submit(self, block: bytes, layout: CsvLayout) -> Awaitable[BlockCount]:
        self._decide(len(block))
        if self._offloading:
            pool = self._pool or await self._enter_pool()
            return await pool.submit(block, layout)
        started = time.thread_time()
        counted = await self._inline.submit(block, layout)
        elapsed = time.thread_time() - started
        self._window_counting += elapsed
        if elapsed > 0:
            rate = len(block) / elapsed
            self._capacity = rate if not self._capacity else 0.8 * self._capacity + 0.2 * rate
        return counted

    async def _enter_pool(self) -> PoolCounting:
        self._pool = await PoolCounting(self.workers, inline_until_ready=True).__aenter__()
        return self._pool

    def _decide(self, size: int) -> None:
        self._window_bytes += size
        now = time.perf_counter()
        elapsed = now - self._window_start
        if elapsed < self._window or not self._capacity:
            return
        if self._offloading:
            # What inline counting would cost now; half the threshold, so it does not flap.
            busy = self._window_bytes / self._capacity / elapsed
            self._offloading = busy > self._share / 2
        else:
            self._offloading = self._window_counting / elapsed > self._share
        self._window_start = now
        self._window_bytes = 0
        self._window_counting = 0.0


class _Worker:
    """The event loop's side of one worker process: requests out, replies back in order."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_reply: Callable[[], None],
    ) -> None:
        self.process = process
        self.pending: deque[asyncio.Future[BlockCount]] = deque()
        self._reader = reader
        self._writer = writer
        self._on_reply = on_reply
        self._replies = asyncio.create_task(self._read_replies())

    @classmethod
    async def start(cls, on_reply: Callable[[], None]) -> _Worker:
        """Starts a worker process; `on_reply` is called once per block it has answered."""
        ours, theirs = socket.socketpair()
        # Room in the kernel for the blocks in flight (two of a few hundred KiB each), so that
        # a worker reads a whole block at once. With the default buffer (about 200 KiB on
        # Linux) the rest of a block waits in the event loop, and the worker idles until the
        # loop comes round to send it: the workers were idle a tenth of the time on small.
        # The kernel caps the size at its net.core.wmem_max / rmem_max.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER_BYTES)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER_BYTES)
        process = None
        try:
            with theirs:
                # A fresh interpreter that imports only the counting core: a fork would copy
                # this process's threads and event loop, multiprocessing would re-import the
                # CLI in every worker.
                process = await asyncio.to_thread(
                    subprocess.Popen,
                    [sys.executable, "-m", "export_client._worker", str(theirs.fileno())],
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                )
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            if process is not None:
                process.kill()
                await asyncio.to_thread(process.wait)
            raise
        return cls(process, reader, writer, on_reply)

    async def submit(self, block: bytes, layout: CsvLayout) -> Awaitable[BlockCount]:
        future: asyncio.Future[BlockCount] = asyncio.get_running_loop().create_future()
        # Whoever gave up on this block (a retry, a failed run) need not read its error.
        future.add_done_callback(_mark_read)
        if self._replies.done():
            self._on_reply()
            future.set_exception(CountingWorkerError("A counting worker process has stopped."))
            return future
        self.pending.append(future)
        header = REQUEST.pack(
            len(block), layout.field_count, layout.patient_index, layout.event_type_index
        )
        try:
            self._writer.write(header)
            self._writer.write(block)
            await self._writer.drain()
        except ConnectionError:
            pass  # the worker is gone; the reply reader fails this block's future
        return future

    async def _read_replies(self) -> None:
        failure: BaseException | None = None
        try:
            while True:
                (size,) = REPLY.unpack(await self._reader.readexactly(REPLY.size))
                reply = pickle.loads(await self._reader.readexactly(size))
                future = self.pending.popleft()
                self._on_reply()
                if future.done():
                    continue
                if isinstance(reply, str):
                    future.set_exception(CountingWorkerError(f"Counting a block failed: {reply}"))
                else:
                    future.set_result(reply)
        except asyncio.IncompleteReadError as error:
            failure = error  # end of file: the worker exited
        except BaseException as error:
            failure = error
            raise
        finally:
            # Whatever ended the replies, no block may wait for ever, nor hold its room.
            if self.pending:
                code = await self._exit_code()
                stopped = CountingWorkerError(
                    f"A counting worker process stopped (exit code {code})."
                )
                stopped.__cause__ = failure
                while self.pending:
                    future = self.pending.popleft()
                    self._on_reply()
                    if not future.done():
                        future.set_exception(stopped)

    async def _exit_code(self) -> int | None:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.process.wait), 1)
        except (TimeoutError, asyncio.CancelledError):
            return self.process.poll()

    async def stop(self) -> None:
        """Lets the worker answer what it has, then waits for it to exit."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            # End of file on the worker's side: it answers what it has read, then exits.
            self._writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError, CountingWorkerError):
            await asyncio.wait_for(asyncio.shield(self._replies), 5)
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        try:
            await asyncio.to_thread(self.process.wait, 5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
        self._replies.cancel()
        await asyncio.gather(self._replies, return_exceptions=True)


def _mark_read(future: asyncio.Future[BlockCount]) -> None:
    if not future.cancelled():
        future.exception()
