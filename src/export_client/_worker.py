"""A counting worker process: blocks in over a socket, counts back out.

Run as `python -m export_client._worker FD` by `PoolCounting`; it imports only the counting
core, so it starts in a few tens of milliseconds and stays small.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import socket
import struct
import sys

from ._counting import BlockCount, CsvLayout, count_block

# Block size and the layout's three indexes; then the block's bytes.
REQUEST = struct.Struct("!QIII")
# Size of the pickled reply that follows: a BlockCount, or the text of an error.
REPLY = struct.Struct("!Q")


def count_request(block: bytes, layout: CsvLayout) -> BlockCount | str:
    """The block's count, or what went wrong as text (a worker never dies of a bad block)."""
    try:
        return count_block(block, layout)
    except Exception as error:
        return f"{type(error).__name__}: {error}"


def serve(sock: socket.socket) -> None:
    """Reads a block, counts it, sends the count back; stops at end of file."""
    requests = sock.makefile("rb", buffering=1 << 16)
    with sock, requests:
        while header := requests.read(REQUEST.size):
            if len(header) < REQUEST.size:
                return
            size, field_count, patient_index, event_type_index = REQUEST.unpack(header)
            block = requests.read(size)
            if len(block) < size:
                return
            layout = CsvLayout(field_count, patient_index, event_type_index)
            reply = pickle.dumps(count_request(block, layout), protocol=pickle.HIGHEST_PROTOCOL)
            sock.sendall(REPLY.pack(len(reply)) + reply)


def main() -> None:
    # Ctrl-C reaches the whole process group; the parent decides, and closing the socket
    # is how it tells a worker to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent that went away first leaves nobody to answer: not an error worth a traceback.
    with contextlib.suppress(ConnectionError):
        serve(socket.socket(fileno=int(sys.argv[1])))


if __name__ == "__main__":
    main()
