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

    Use it as an async context manager. The workers start in the background; until they are
    up, blocks are counted inline, so starting them never holds a download up.
    """

    def __init__(self, workers: int | None = None, *, depth: int = 2) -> None:
        self.size = workers or os.cpu_count() or 1
        # Two blocks per worker: one being counted, one arriving; more would only hold memory.
        self._room = asyncio.Semaphore(self.size * depth)
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
        await asyncio.gather(*(worker.stop() for worker in self._workers))
        self._workers = []

    async def submit(self, block: bytes, layout: CsvLayout) -> Awaitable[BlockCount]:
        if not self._workers:
            if self._starting is None or not self._starting.done():
                return await self._inline.submit(block, layout)
            self._starting.result()  # the workers failed to start: say why
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
    which on a shared machine comes out of the server's cores. So the pool starts only when
    counting would take most of the event loop's time: input arriving faster than `share`
    of the rate at which this process counts.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        share: float = 0.6,
        window: float = 0.25,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._share = share
        self._window = window
        self._inline = InlineCounting()
        self._pool: PoolCounting | None = None
        self._offloading = False
        # Bytes per second that count_block reaches in this process, and the input rate,
        # measured over windows of `window` seconds.
        self._capacity = 0.0
        self._window_start = time.perf_counter()
        self._window_bytes = 0

    @property
    def offloading(self) -> bool:
        """Whether blocks currently go to the worker processes."""
        return self._offloading

    async def __aenter__(self) -> AdaptiveCounting:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            await self._pool.__aexit__(*exc_info)
            self._pool = None

    async def submit(self, block: bytes, layout: CsvLayout) -> Awaitable[BlockCount]:
        self._measure_input(len(block))
        if self._offloading:
            if self._pool is None:
                self._pool = await PoolCounting(self.workers).__aenter__()
            return await self._pool.submit(block, layout)
        started = time.perf_counter()
        counted = await self._inline.submit(block, layout)
        elapsed = time.perf_counter() - started
        if elapsed > 0:
            rate = len(block) / elapsed
            self._capacity = rate if not self._capacity else 0.8 * self._capacity + 0.2 * rate
        return counted

    def _measure_input(self, size: int) -> None:
        self._window_bytes += size
        now = time.perf_counter()
        elapsed = now - self._window_start
        if elapsed < self._window or not self._capacity:
            return
        load = self._window_bytes / elapsed / self._capacity
        # Some hysteresis, so that a run near the threshold does not flap.
        if load > self._share:
            self._offloading = True
        elif load < self._share * 0.5:
            self._offloading = False
        self._window_start = now
        self._window_bytes = 0


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
        return cls(process, reader, writer, on_reply)

    async def submit(self, block: bytes, layout: CsvLayout) -> Awaitable[BlockCount]:
        future: asyncio.Future[BlockCount] = asyncio.get_running_loop().create_future()
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
        try:
            while True:
                (size,) = REPLY.unpack(await self._reader.readexactly(REPLY.size))
                reply = pickle.loads(await self._reader.readexactly(size))
                future = self.pending.popleft()
                self._on_reply()
                if not future.done():
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            failure = CountingWorkerError(
                f"A counting worker process stopped (exit code {self.process.poll()})."
            )
            failure.__cause__ = error
            while self.pending:
                future = self.pending.popleft()
                self._on_reply()
                if not future.done():
                    future.set_exception(failure)

    async def stop(self) -> None:
        self._writer.close()  # the worker reads end of file and exits
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        try:
            await asyncio.to_thread(self.process.wait, 5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
        self._replies.cancel()
        await asyncio.gather(self._replies, return_exceptions=True)
