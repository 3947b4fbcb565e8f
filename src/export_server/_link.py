"""The server's side of the generation protocol: one worker process, and the streams it feeds."""

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

from ._catalog import DownloadSpec
from ._exceptions import WorkerCrashedError, WorkerError
from ._worker import CANCEL, CHUNK, COUNT, CREDIT, END, HEADER, START, frame

__all__ = ["WorkerLink"]

logger = logging.getLogger("export_server.workers")

_INITIAL_CREDIT = 4

_Item = bytes | BaseException | None


class WorkerLink:
    """A worker process, connected by a socket pair, and the jobs it runs for streams.

    Its reader task hands each frame to its job's stream. When the connection ends (the worker
    died, or `stop` closed it), the reader marks the link dead and fails the streams before
    anything else happens: no new stream is given to a dead worker, and none of its streams
    looks complete.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.process = process
        self.started = time.monotonic()
        self.dead = False
        self._reader = reader
        self._writer = writer
        self._jobs: dict[int, asyncio.Queue[_Item]] = {}
        self._job_ids = itertools.count()
        # Ends when the connection does: what a supervisor waits for.
        self.reader_task = asyncio.create_task(self._read())

    @classmethod
    async def start(cls) -> WorkerLink:
        """Start a worker process and connect to it; raises WorkerError if it cannot start."""
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
        return cls(process, reader, writer)

    @property
    def load(self) -> int:
        """How many streams the worker is generating right now."""
        return len(self._jobs)

    def close(self) -> None:
        """Close the connection: the worker exits, and the reader fails what is unfinished."""
        self._writer.close()

    async def stop(self) -> None:
        """Close the connection and reap the worker process."""
        self.close()
        await self.reader_task
        await _reap(self.process)

    async def stream(
        self, download: DownloadSpec, *, chunk_size: int
    ) -> AsyncGenerator[bytes, None]:
        """Yield the body of a download as the worker generates it.

        Raises WorkerError (or WorkerCrashedError) if the body cannot be completed. Closing the
        iterator early cancels the job.
        """
        job_id = next(self._job_ids)
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._jobs[job_id] = queue
        self._send(job_id, START, pickle.dumps((download, chunk_size)))
        self._send(job_id, CREDIT, COUNT.pack(_INITIAL_CREDIT))
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
                self._send(job_id, CREDIT, COUNT.pack(1))
        finally:
            self._jobs.pop(job_id, None)
            if not finished:
                self._send(job_id, CANCEL)

    def _send(self, job_id: int, kind: int, payload: bytes = b"") -> None:
        if not self.dead and not self._writer.is_closing():
            self._writer.write(frame(job_id, kind, payload))

    async def _read(self) -> None:
        try:
            while True:
                header = await self._reader.readexactly(HEADER.size)
                length, job_id, kind = HEADER.unpack(header)
                payload = await self._reader.readexactly(length) if length else b""
                queue = self._jobs.get(job_id)
                if queue is None:
                    continue  # a cancelled job's chunks that were already on their way
                if kind == CHUNK:
                    queue.put_nowait(payload)
                elif kind == END:
                    queue.put_nowait(None)
                else:
                    reason = payload.decode(errors="replace")
                    queue.put_nowait(WorkerError(f"Generation failed: {reason}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        # Before anything awaits: no new stream may go to this worker, and its streams must fail
        # rather than look complete.
        self.dead = True
        for queue in self._jobs.values():
            queue.put_nowait(
                WorkerCrashedError(
                    f"Worker process {self.process.pid} stopped while generating a body."
                )
            )
        self._jobs.clear()
        self._writer.close()


def _start_process(fd: int) -> subprocess.Popen[bytes]:
    # A fresh interpreter rather than a fork: the server may run threads (tests run it in one).
    # The worker ignores SIGINT before it imports anything, and runs in a session of its own, so
    # a Ctrl-C at the terminal reaches only the server, which then stops its workers in order.
    code = (
        "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        f"from export_server._worker import worker_main; worker_main({fd})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


async def _reap(process: subprocess.Popen[bytes]) -> None:
    """Wait for a worker process to exit (it has been told to), killing it if it does not."""
    try:
        await asyncio.to_thread(process.wait, 5)
    except subprocess.TimeoutExpired:
        logger.error("Worker process %d did not stop; killing it.", process.pid)
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(process.wait, 5)
    if process.returncode not in (0, None):
        logger.debug("Worker process %d exited with %s.", process.pid, process.returncode)
