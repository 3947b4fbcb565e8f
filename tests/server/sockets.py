"""What the kernel reports about this machine's sockets, for the server tests (Linux only)."""

from __future__ import annotations

import select
import socket
import struct
import time
from pathlib import Path
from urllib.parse import urlsplit

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_TCP_LISTEN = 10
_NLMSG_HEADER = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then struct inet_diag_sockid.
_REQUEST = struct.Struct("=BBBBI4s32sI8s")
# struct inet_diag_msg up to idiag_wqueue: family, state, timer, retrans, the 48-byte sockid,
# expires, rqueue, wqueue.
_MESSAGE = struct.Struct("=BBBB2s46sIII")


def somaxconn() -> int:
    """The kernel's cap of any listen backlog."""
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def listen_backlogs(port: int) -> list[int]:
    """The backlog of every IPv4 TCP socket listening on `port`, as the kernel holds it.

    inet_diag reports a listening socket's backlog as its write queue (what `ss -ltn` shows as
    Send-Q); /proc/net/tcp does not show it at all.
    """
    request = _REQUEST.pack(
        socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN, b"", b"", 0, b"\xff" * 8
    )
    header = _NLMSG_HEADER.pack(
        _NLMSG_HEADER.size + len(request),
        _SOCK_DIAG_BY_FAMILY,
        _NLM_F_REQUEST | _NLM_F_DUMP,
        1,
        0,
    )
    found: list[int] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as netlink:
        netlink.sendto(header + request, (0, 0))
        while True:
            data = netlink.recv(1 << 16)
            offset = 0
            while offset < len(data):
                length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR:
                    raise OSError("The kernel refused the inet_diag request.")
                fields = _MESSAGE.unpack_from(data, offset + _NLMSG_HEADER.size)
                source_port = int.from_bytes(fields[4], "big")
                if source_port == port:
                    found.append(fields[-1])
                offset += (length + 3) & ~3


# A small receive buffer (the kernel doubles it) caps the client's window, so the server's side
# fills up after a few hundred KiB instead of after the many MiB that autotuning allows.
_CLIENT_RECEIVE_BUFFER = 1 << 16


def open_request(url: str) -> socket.socket:
    """A connection that has sent `GET url` (and `Connection: close`) and read nothing yet."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _CLIENT_RECEIVE_BUFFER)
    sock.connect((parts.hostname, parts.port))
    request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
    sock.sendall(request.encode())
    return sock


def seconds_until_closed(sock: socket.socket, timeout: float) -> float | None:
    """How long until the peer closes or resets `sock`, reading nothing; None if it does not.

    Unread data keeps a socket readable, so only a hang-up, a reset or the peer's FIN count.
    """
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    started = time.monotonic()
    if not poller.poll(timeout * 1000):
        return None
    return time.monotonic() - started


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes."""
    return read_at(sock, float("inf"), size=1 << 20)


def read_at(sock: socket.socket, rate: float, *, size: int = 1 << 14) -> bytes:
    """Read until the peer closes, `rate` bytes per second on average, `size` at most at once.

    Paced by the clock rather than by fixed pauses, so a late wake-up is made up for, and the
    rate holds on a busy machine too.
    """
    received = bytearray()
    started = time.monotonic()
    while True:
        delay = started + len(received) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        data = sock.recv(size)
        if not data:
            return bytes(received)
        received += data


def chunked_body(response: bytes) -> bytes:
    """The body of a complete chunked HTTP response."""
    return b"".join(_chunks(response))


def chunk_sizes(response: bytes) -> list[int]:
    """The sizes of the chunks of a complete chunked HTTP response, without the last, empty one."""
    return [len(chunk) for chunk in _chunks(response)]


def _chunks(response: bytes) -> list[bytes]:
    head, _, rest = response.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head, head
    chunks: list[bytes] = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n", "no proper last chunk"
            return chunks
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n", "a chunk shorter than announced"
        rest = rest[size + 2 :]
