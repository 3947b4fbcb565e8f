"""Every default of the client, in one place, with the reason for each."""

from __future__ import annotations

import os

DEFAULT_SERVER = "http://localhost:8000"

# Chosen from benchmarks/concurrency.py: one stream leaves a generating server's second worker
# idle, and from two up the levels differ by less than the host's drift; 8 keeps a server
# with up to 8 generation workers busy.
DEFAULT_CONCURRENCY = 8

DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5  # seconds before the first retry, doubled before each next one
MAX_RETRY_DELAY = 30.0  # caps the backoff and an absurd Retry-After alike

# Connect and idle-read bound: a healthy stream of any length never times out.
DEFAULT_TIMEOUT = 60.0

# Below 1 KiB/s for 30 s: never on a healthy stream, even from a server that generates its
# data as it sends it (hundreds of KB/s per stream), always on one that drips.
DEFAULT_SPEED_LIMIT = 1024.0
DEFAULT_SPEED_TIME = 30.0

# A CSV line longer than this is an error, not unbounded memory.
DEFAULT_MAX_LINE_BYTES = 1 << 20

# The API's JSON documents are a few hundred bytes; a hostile or broken server must not make
# the client hold more than this per response.
MAX_JSON_BYTES = 1 << 20

# A body may hold blank lines, which are not rows, but not without bound: at most as many as
# the rows announced, and never fewer than this many.
BLANK_LINES_FLOOR = 1000

# Counting a block costs a hand-off to a thread; blocks of at least this much keep that cost
# negligible, and at most PENDING_BLOCKS of them per download in flight keep memory flat.
BLOCK_BYTES = 1 << 17
PENDING_BLOCKS = 2

# What aiohttp buffers per stream before it stops reading the socket.
READ_BUFFER_BYTES = 1 << 17


def available_cores() -> int:
    """The cores this process may run on (fewer than the machine's in a container)."""
    if hasattr(os, "sched_getaffinity"):  # not on macOS or Windows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
