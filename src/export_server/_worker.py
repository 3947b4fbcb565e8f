"""A worker process's side of the generation protocol, kept light: no aiohttp, no asyncio.

A worker imports only this module, the generator and the catalog types. Frames are `!IIB`
(payload length, job id, kind) followed by the payload. The server sends START (a pickled
`(DownloadSpec, chunk_size)`), CREDIT (a `!I` count of chunks the job may send ahead) and
CANCEL; the worker sends CHUNK, END and ERROR. A worker interleaves its jobs one chunk at a
time, and only for jobs that have credit, so every stream makes progress, a slow client only
stalls its own job, and memory stays bounded by the credits.
"""

from __future__ import annotations

import pickle
import select
import signal
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ._generate import generate_body

__all__ = ["worker_main"]

HEADER = struct.Struct("!IIB")
COUNT = struct.Struct("!I")
START, CREDIT, CANCEL, CHUNK, END, ERROR = range(6)
_RECV_SIZE = 1 << 16


def frame(job_id: int, kind: int, payload: bytes = b"") -> bytes:
    """One frame of the protocol."""
    return HEADER.pack(len(payload), job_id, kind) + payload


@dataclass
class _WorkerJob:
    chunks: Iterator[bytes]
    credit: int = 0


def worker_main(fd: int) -> None:
    """Run a worker process on the socket `fd` until the server closes it."""
    # The server decides when workers stop (by closing the socket), so a Ctrl-C or a stray
    # SIGTERM must not kill a worker mid-stream. (The server also starts workers in their own
    # session, so a terminal's Ctrl-C does not reach them at all.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with socket.socket(fileno=fd) as sock:
        try:
            _serve(sock)
        except ConnectionError:
            # The server went away mid-frame (it stopped, or died): nothing left to do.
            return


def _serve(sock: socket.socket) -> None:
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
                sock.sendall(frame(job_id, END))
            except Exception as exc:  # reported to the stream, which fails loudly
                del jobs[job_id]
                sock.sendall(frame(job_id, ERROR, repr(exc).encode()))
            else:
                job.credit -= 1
                sock.sendall(frame(job_id, CHUNK, chunk))


def _handle_frames(buffer: bytearray, jobs: dict[int, _WorkerJob]) -> None:
    while len(buffer) >= HEADER.size:
        length, job_id, kind = HEADER.unpack_from(buffer)
        end = HEADER.size + length
        if len(buffer) < end:
            return
        payload = bytes(buffer[HEADER.size : end])
        del buffer[:end]
        if kind == START:
            download, chunk_size = pickle.loads(payload)
            jobs[job_id] = _WorkerJob(generate_body(download, chunk_size=chunk_size))
        elif kind == CREDIT:
            if job_id in jobs:
                jobs[job_id].credit += COUNT.unpack(payload)[0]
        elif kind == CANCEL:
            jobs.pop(job_id, None)
