"""The project's own mock server, started for one run on a free loopback port."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from ._exceptions import ExportClientError

_LISTENING = re.compile(r"export server listening on (http://\S+)")


class MockServerError(ExportClientError):
    """The mock server could not be started."""


@contextmanager
def mock_server(*, show_log: bool = False, start_timeout: float = 30.0) -> Iterator[str]:
    """Runs `python -m export_server --port 0` and yields its base URL until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "export_server", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    drain: threading.Thread | None = None
    try:
        url = _wait_for_url(process, process.stderr, start_timeout)
        # The server keeps logging; an unread pipe would fill up and block it.
        drain = threading.Thread(
            target=_drain, args=(process.stderr, show_log), name="mock-server-log", daemon=True
        )
        drain.start()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # A straggler that inherited the pipe would keep the reader blocked, and closing
        # the pipe under a blocked reader would block too: leave that one to exit.
        if drain is not None:
            drain.join(timeout=2)
        if drain is None or not drain.is_alive():
            process.stderr.close()


def _wait_for_url(process: subprocess.Popen[str], log: IO[str], timeout: float) -> str:
    found: list[str] = []
    seen: list[str] = []

    def read() -> None:
        for line in log:
            seen.append(line.rstrip())
            match = _LISTENING.search(line)
            if match:
                found.append(match.group(1))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if found:
        return found[0]
    detail = seen[-1] if seen else f"no answer within {timeout:.0f}s"
    if process.poll() is not None:
        detail = f"it exited with code {process.returncode}: {detail}"
    raise MockServerError(f"The mock server did not start ({detail}).")


def _drain(log: IO[str], show: bool) -> None:
    try:
        for line in log:
            if show:
                sys.stderr.write(f"[server] {line}")
    except ValueError:
        pass  # the pipe was closed while reading: the server is gone
