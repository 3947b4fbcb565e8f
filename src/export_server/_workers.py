"""Generation in worker processes, so bodies are generated on every core and never on the loop.

Each worker is a long-lived process connected to the server by a socketpair. Frames are
`!IIB` (payload length, job id, kind) followed by the payload. The server sends START (a pickled
`(DownloadSpec, chunk_size)`), CREDIT (a `!I` count of chunks the job may send ahead) and
CANCEL; the worker sends CHUNK, END and ERROR. A worker interleaves its jobs one chunk at a time,
and only for jobs that have credit, so every stream makes progress, a slow client only stalls
its own job, and memory stays bounded by the credits.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from ._catalog import DownloadSpec
from ._exceptions import WorkerCrashedError, WorkerError
from ._generate import generate_body

__all__ = ["WorkerPool", "worker_main"]

logger = logging.getLogger("export_server.workers")

_HEADER = struct.Struct("!IIB")
_COUNT = struct.Struct("!I")
_START, _CREDIT, _CANCEL, _CHUNK, _END, _ERROR = range(6)
_INITIAL_CREDIT = 4
_RECV_SIZE = 1 << 16


def _frame(job_id: int, kind: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(len(payload), job_id, kind) + payload


@dataclass
class _WorkerJob:
    chunks: Iterator[bytes]
    credit: int = 0


def worker_main(fd: int) -> None:
    """Run a worker process on the socket `fd` until the server closes it."""
    # The server decides when workers stop (by closing the socket), so a Ctrl-C sent to the
    # whole process group or a stray SIGTERM must not kill a worker mid-stream.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with socket.socket(fileno=fd) as sock:
        jobs: dict[int, _WorkerJob] = {}
        buffer = bytearray()
        while True:
            busy = any(job.credit for job in jobs.values())
            readable, _, _ = select.select([sock], [], [], 0 if busy else None)
            if readable:
                data = sock.recv(_RECV_SIZE)
                if not data:
                    return
                buffer += data
                _handle_frames(buffer, jobs)
            for job_id in list(jobs):
                job = jobs[job_id]
                if not job.credit:
                    continue
                try:
                    chunk = next(job.chunks)
                except StopIteration:
                    del jobs[job_id]
                    sock.sendall(_frame(job_id, _END))
                except Exception as exc:  # reported to the stream, which fails loudly
                    del jobs[job_id]
                    sock.sendall(_frame(job_id, _ERROR, repr(exc).encode()))
                else:
                    job.credit -= 1
                    sock.sendall(_frame(job_id, _CHUNK, chunk))


def _handle_frames(buffer: bytearray, jobs: dict[int, _WorkerJob]) -> None:
    while len(buffer) >= _HEADER.size:
        length, job_id, kind = _HEADER.unpack_from(buffer)
        end = _HEADER.size + length
        if len(buffer) < end:
            return
        payload = bytes(buffer[_HEADER.size : end])
        del buffer[:end]
        if kind == _START:
            download, chunk_size = pickle.loads(payload)
            jobs[job_id] = _WorkerJob(generate_body(download, chunk_size=chunk_size))
        elif kind == _CREDIT:
            if job_id in jobs:
                jobs[job_id].credit += _COUNT.unpack(payload)[0]
        elif kind == _CANCEL:
            jobs.pop(job_id, None)


_Item = bytes | BaseException | None


@dataclass(eq=False)
class _Worker:
    process: subprocess.Popen[bytes]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    jobs: dict[int, asyncio.Queue[_Item]] = field(default_factory=dict)
    reader_task: asyncio.Task[None] | None = None

    def send(self, job_id: int, kind: int, payload: bytes = b"") -> None:
        if not self.writer.is_closing():
            self.writer.write(_frame(job_id, kind, payload))


class WorkerPool:
    """Long-lived generation processes; each new stream goes to the least loaded one."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"A worker pool needs at least one worker, got {size}.")
        self.size = size
        self._workers: list[_Worker] = []
        self._job_ids = itertools.count()
        self._closing = False

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers, in slot order."""
        return [worker.process.pid for worker in self._workers]

    @property
    def loads(self) -> list[int]:
        """How many streams each worker is generating right now, in slot order."""
        return [len(worker.jobs) for worker in self._workers]

    async def start(self) -> None:
        """Start the worker processes."""
        self._workers = [await self._spawn() for _ in range(self.size)]

    async def stop(self) -> None:
        """Stop every worker; their unfinished streams fail."""
        self._closing = True
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.writer.close()
        for worker in workers:
            if worker.reader_task is not None:
                await worker.reader_task
            await _reap(worker.process)

    async def _spawn(self) -> _Worker:
        parent, child = socket.socketpair()
        with child:
            process = _start_process(child.fileno())
        reader, writer = await asyncio.open_connection(sock=parent, limit=1 << 20)
        worker = _Worker(process, reader, writer)
        worker.reader_task = asyncio.create_task(self._read(worker))
        return worker

    async def _read(self, worker: _Worker) -> None:
        try:
            while True:
                header = await worker.reader.readexactly(_HEADER.size)
                length, job_id, kind = _HEADER.unpack(header)
                payload = await worker.reader.readexactly(length) if length else b""
                queue = worker.jobs.get(job_id)
                if queue is None:
                    continue  # a cancelled job's chunks that were already on their way
                if kind == _CHUNK:
                    queue.put_nowait(payload)
                elif kind == _END:
                    queue.put_nowait(None)
                else:
                    queue.put_nowait(WorkerError(f"Generation failed: {payload.decode()}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        # Whatever ended the connection, its streams must fail rather than look complete.
        for queue in worker.jobs.values():
            queue.put_nowait(
                WorkerCrashedError(
                    f"Worker process {worker.process.pid} stopped while generating a body."
                )
            )
        worker.jobs.clear()
        worker.writer.close()
        if self._closing or worker not in self._workers:
            return
        logger.error("Worker process %d died; starting a new one.", worker.process.pid)
        await _reap(worker.process)
        replacement = await self._spawn()
        if self._closing or worker not in self._workers:
            # The pool stopped while the replacement was starting.
            replacement.writer.close()
            await _reap(replacement.process)
            return
        self._workers[self._workers.index(worker)] = replacement

    async def stream(
        self, download: DownloadSpec, *, chunk_size: int = 32768
    ) -> AsyncIterator[bytes]:
        """Yield the body of a download as a worker generates it.

        Raises WorkerError (or WorkerCrashedError) if the body cannot be completed. Closing the
        iterator early (use `contextlib.aclosing`) cancels the job.
        """
        if not self._workers:
            raise WorkerError("The worker pool is not running.")
        worker = min(self._workers, key=lambda w: len(w.jobs))
        job_id = next(self._job_ids)
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        worker.jobs[job_id] = queue
        worker.send(job_id, _START, pickle.dumps((download, chunk_size)))
        worker.send(job_id, _CREDIT, _COUNT.pack(_INITIAL_CREDIT))
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
                worker.send(job_id, _CREDIT, _COUNT.pack(1))
        finally:
            worker.jobs.pop(job_id, None)
            if not finished:
                worker.send(job_id, _CANCEL)


def _start_process(fd: int) -> subprocess.Popen[bytes]:
    # A fresh interpreter rather than a fork: the server may run threads (tests run it in one).
    code = f"from export_server._workers import worker_main; worker_main({fd})"
    return subprocess.Popen([sys.executable, "-c", code], pass_fds=(fd,), stdin=subprocess.DEVNULL)


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
