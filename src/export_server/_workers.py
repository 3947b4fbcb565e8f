"""Generation in worker processes, so bodies are generated on every core and never on the loop.

Each worker is a long-lived process connected to the server by a socketpair and speaking the
protocol of `_worker_entry`. Each new stream goes to the least loaded live worker. A worker that
dies fails its streams at once, is marked dead before anything else happens (so no new stream
is given to it) and is replaced, with a backoff and a limit for workers that keep dying.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from ._catalog import DownloadSpec
from ._exceptions import WorkerCrashedError, WorkerError
from ._worker_entry import CANCEL, CHUNK, COUNT, CREDIT, END, HEADER, START, frame

__all__ = ["WorkerPool"]

logger = logging.getLogger("export_server.workers")

_INITIAL_CREDIT = 4
# Consecutive failed starts of one slot (a worker that dies within _STABLE_AFTER seconds of its
# start counts as one) before the pool gives up on that slot.
_RESPAWN_LIMIT = 5
# Seconds before the second start attempt of a slot, doubled before each further one.
_RESPAWN_BACKOFF = 0.1
_STABLE_AFTER = 10.0
# How long a new stream waits for a replacement when every worker is dead.
_WAIT_FOR_RESPAWN = 10.0

_Item = bytes | BaseException | None


@dataclass(eq=False)
class _Worker:
    process: subprocess.Popen[bytes]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    strikes: int = 0
    """Failed starts of this slot just before this worker (0 after a worker that ran a while)."""
    jobs: dict[int, asyncio.Queue[_Item]] = field(default_factory=dict)
    reader_task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)
    dead: bool = False
    respawning: bool = False

    def send(self, job_id: int, kind: int, payload: bytes = b"") -> None:
        if not self.dead and not self.writer.is_closing():
            self.writer.write(frame(job_id, kind, payload))


class WorkerPool:
    """Long-lived generation processes; each new stream goes to the least loaded one."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"A worker pool needs at least one worker, got {size}.")
        self.size = size
        self._workers: list[_Worker] = []
        self._job_ids = itertools.count()
        self._closing = False
        self._stopping = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers, in slot order (a dead one until it is replaced)."""
        return [worker.process.pid for worker in self._workers]

    @property
    def loads(self) -> list[int]:
        """How many streams each worker is generating right now, in slot order."""
        return [len(worker.jobs) for worker in self._workers]

    async def start(self) -> None:
        """Start the worker processes.

        Raises WorkerError if one cannot be started; the ones already started are stopped then.
        """
        self._closing = False
        self._stopping = asyncio.Event()
        try:
            for _ in range(self.size):
                self._workers.append(await self._spawn())
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every worker; their unfinished streams fail."""
        self._closing = True
        self._stopping.set()
        self._wake()
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.writer.close()
        for worker in workers:
            if worker.reader_task is not None:
                await worker.reader_task
            await _reap(worker.process)

    async def _spawn(self, *, strikes: int = 0) -> _Worker:
        parent: socket.socket | None = None
        process: subprocess.Popen[bytes] | None = None
        try:
            parent, child = socket.socketpair()
            with child:
                process = _start_process(child.fileno())
            reader, writer = await asyncio.open_connection(sock=parent, limit=1 << 20)
        except BaseException as exc:
            if parent is not None:
                parent.close()
            if process is not None:
                # Rare, and the process was just started: killing and waiting takes no time.
                process.kill()
                process.wait()
            if isinstance(exc, OSError):
                raise WorkerError(f"Cannot start a worker process: {exc}.") from exc
            raise
        worker = _Worker(process, reader, writer, strikes=strikes)
        worker.reader_task = asyncio.create_task(self._read(worker))
        return worker

    async def _read(self, worker: _Worker) -> None:
        try:
            while True:
                header = await worker.reader.readexactly(HEADER.size)
                length, job_id, kind = HEADER.unpack(header)
                payload = await worker.reader.readexactly(length) if length else b""
                queue = worker.jobs.get(job_id)
                if queue is None:
                    continue  # a cancelled job's chunks that were already on their way
                if kind == CHUNK:
                    queue.put_nowait(payload)
                elif kind == END:
                    queue.put_nowait(None)
                else:
                    queue.put_nowait(WorkerError(f"Generation failed: {payload.decode()}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        # Before anything awaits: no new stream may go to this worker, and its streams must fail
        # rather than look complete.
        worker.dead = True
        worker.respawning = not self._closing and worker in self._workers
        for queue in worker.jobs.values():
            queue.put_nowait(
                WorkerCrashedError(
                    f"Worker process {worker.process.pid} stopped while generating a body."
                )
            )
        worker.jobs.clear()
        worker.writer.close()
        if not worker.respawning:
            return
        logger.error("Worker process %d died; starting a new one.", worker.process.pid)
        try:
            await _reap(worker.process)
            await self._replace(worker)
        finally:
            worker.respawning = False
            self._wake()

    async def _replace(self, dead: _Worker) -> None:
        # A worker that dies soon after its start counts as a failed start, so that a worker
        # that cannot run at all is not restarted forever.
        quick = time.monotonic() - dead.started < _STABLE_AFTER
        strikes = dead.strikes + 1 if quick else 1
        while strikes <= _RESPAWN_LIMIT:
            if strikes > 1:
                with contextlib.suppress(TimeoutError):
                    delay = _RESPAWN_BACKOFF * 2 ** (strikes - 2)
                    await asyncio.wait_for(self._stopping.wait(), delay)
            if self._closing or dead not in self._workers:
                return
            try:
                replacement = await self._spawn(strikes=strikes)
            except WorkerError as exc:
                logger.warning("%s (attempt %d of %d)", exc, strikes, _RESPAWN_LIMIT)
                strikes += 1
                continue
            if self._closing or dead not in self._workers:
                # The pool stopped while the replacement was starting.
                replacement.writer.close()
                if replacement.reader_task is not None:
                    await replacement.reader_task
                await _reap(replacement.process)
                return
            self._workers[self._workers.index(dead)] = replacement
            return
        alive = sum(not worker.dead for worker in self._workers)
        logger.error(
            "Giving up on a worker slot after %d failed starts; %d of %d workers are running.",
            _RESPAWN_LIMIT,
            alive,
            self.size,
        )

    def _wake(self) -> None:
        """Tell the streams waiting for a live worker that the workers changed."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _live_worker(self) -> _Worker:
        """The least loaded live worker; waits a while for a replacement if none is alive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _WAIT_FOR_RESPAWN
        while True:
            if self._closing or not self._workers:
                raise WorkerError("The worker pool is not running.")
            alive = [worker for worker in self._workers if not worker.dead]
            if alive:
                return min(alive, key=lambda w: len(w.jobs))
            remaining = deadline - loop.time()
            if remaining <= 0 or not any(worker.respawning for worker in self._workers):
                raise WorkerCrashedError(
                    "Every worker process has died and none could be started again."
                )
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)

    async def stream(
        self, download: DownloadSpec, *, chunk_size: int = 32768
    ) -> AsyncGenerator[bytes, None]:
        """Yield the body of a download as a worker generates it.

        Raises WorkerError (or WorkerCrashedError) if the body cannot be completed. Closing the
        iterator early (use `contextlib.aclosing`) cancels the job.
        """
        worker = await self._live_worker()
        job_id = next(self._job_ids)
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        worker.jobs[job_id] = queue
        worker.send(job_id, START, pickle.dumps((download, chunk_size)))
        worker.send(job_id, CREDIT, COUNT.pack(_INITIAL_CREDIT))
        finished = False
        try:
            while True:
                item = await queue.get()
                if item is None:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                # The chunk has been handed on, so the worker may produce one more.
                worker.send(job_id, CREDIT, COUNT.pack(1))
        finally:
            worker.jobs.pop(job_id, None)
            if not finished:
                worker.send(job_id, CANCEL)


def _start_process(fd: int) -> subprocess.Popen[bytes]:
    # A fresh interpreter rather than a fork: the server may run threads (tests run it in one).
    # The worker ignores SIGINT before it imports anything, and runs in a session of its own, so
    # a Ctrl-C at the terminal reaches only the server, which then stops its workers in order.
    code = (
        "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        f"from export_server._worker_entry import worker_main; worker_main({fd})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


async def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        await asyncio.to_thread(process.wait, 5)
    except subprocess.TimeoutExpired:
        logger.error("Worker process %d did not stop; killing it.", process.pid)
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(process.wait, 5)
    if process.returncode not in (0, None):
        logger.debug("Worker process %d exited with %s.", process.pid, process.returncode)
