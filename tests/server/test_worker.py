"""The worker's side of the generation protocol, spoken over a socket pair to a thread."""

import contextlib
import pickle
import select
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

from export_server import Catalog, DownloadSpec, generate_body
from export_server._worker import (
    CANCEL,
    CHUNK,
    COUNT,
    CREDIT,
    END,
    ERROR,
    HEADER,
    START,
    _serve,
    frame,
)

CHUNK_SIZE = 512


@contextlib.contextmanager
def worker() -> Iterator[socket.socket]:
    """The server's end of a connection to a worker that runs in a thread."""
    ours, theirs = socket.socketpair()

    def serve() -> None:
        # As worker_main: the server may go away while the worker sends.
        with theirs, contextlib.suppress(ConnectionError):
            _serve(theirs)

    thread = threading.Thread(target=serve, name="worker")
    thread.start()
    try:
        with ours:
            yield ours
    finally:
        thread.join(10)
    # The end of the connection is the end of the worker.
    assert not thread.is_alive()


def start(sock: socket.socket, job_id: int, download: DownloadSpec, credit: int) -> None:
    sock.sendall(frame(job_id, START, pickle.dumps((download, CHUNK_SIZE))))
    sock.sendall(frame(job_id, CREDIT, COUNT.pack(credit)))


def receive(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        piece = sock.recv(size - len(data))
        assert piece, "the worker closed the connection"
        data += piece
    return bytes(data)


def next_frame(sock: socket.socket) -> tuple[int, int, bytes]:
    """The next frame from the worker: its job id, kind and payload."""
    sock.settimeout(10)
    length, job_id, kind = HEADER.unpack(receive(sock, HEADER.size))
    return job_id, kind, receive(sock, length)


def quiet(sock: socket.socket) -> bool:
    """Whether the worker sends nothing more for a while."""
    readable, _, _ = select.select([sock], [], [], 0.3)
    return not readable


def test_a_job_runs_its_credit_ahead_and_no_further(catalog: Catalog) -> None:
    download = (catalog.downloads("tiny") or [])[0]
    expected = list(generate_body(download, chunk_size=CHUNK_SIZE))
    assert len(expected) > 3
    with worker() as sock:
        start(sock, 7, download, credit=2)
        chunks = [next_frame(sock), next_frame(sock)]
        assert quiet(sock)
        sock.sendall(frame(7, CREDIT, COUNT.pack(len(expected))))
        while chunks[-1][1] == CHUNK:
            chunks.append(next_frame(sock))
    assert chunks[-1] == (7, END, b"")
    assert chunks[:-1] == [(7, CHUNK, chunk) for chunk in expected]


def test_jobs_are_interleaved_a_chunk_at_a_time(catalog: Catalog) -> None:
    first, second = (catalog.downloads("tiny") or [])[:2]
    with worker() as sock:
        start(sock, 1, first, credit=3)
        start(sock, 2, second, credit=3)
        frames = [next_frame(sock) for _ in range(6)]
    assert sorted(job_id for job_id, _, _ in frames) == [1, 1, 1, 2, 2, 2]
    assert [kind for _, kind, _ in frames] == [CHUNK] * 6


def test_a_cancelled_job_sends_nothing_more(catalog: Catalog) -> None:
    download = (catalog.downloads("tiny") or [])[0]
    with worker() as sock:
        start(sock, 3, download, credit=1)
        assert next_frame(sock)[:2] == (3, CHUNK)
        sock.sendall(frame(3, CANCEL))
        sock.sendall(frame(3, CREDIT, COUNT.pack(100)))
        assert quiet(sock)
        # The worker serves the next job as before.
        start(sock, 4, download, credit=1)
        assert next_frame(sock) == (4, CHUNK, next(generate_body(download)))


def test_a_generation_that_fails_is_reported_to_its_stream() -> None:
    # No generator knows this event type: the worker fails after the header line.
    download = DownloadSpec(
        export_id="broken",
        index=0,
        id=uuid.UUID(int=1),
        rows=10,
        patients=("A", "B"),
        event_types=("no_such_type",),
        start_time=datetime(2025, 1, 1),
        end_time=datetime(2025, 1, 1, 0, 1),
        step=timedelta(seconds=6),
    )
    with worker() as sock:
        start(sock, 5, download, credit=4)
        assert next_frame(sock)[:2] == (5, CHUNK)
        job_id, kind, payload = next_frame(sock)
        assert (job_id, kind) == (5, ERROR)
        assert payload == repr(KeyError("no_such_type")).encode()
        assert quiet(sock)
