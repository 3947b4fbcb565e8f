"""What the kernel reports about this machine's sockets, for the server tests (Linux only)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

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
