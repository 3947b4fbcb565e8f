"""The server as a child process that stops with its parent: for `--mock`, benchmarks and tests.

The parent binds a loopback socket on a free port and starts `python -m export_server --fd N
--control-fd M`, handing over the listening socket and one end of a socket pair. The server
writes `ready <url>` on the pair once it accepts requests, and stops cleanly when it reads
end-of-file there: when the parent closes its end, or dies, however it dies (the kernel closes
a dead process's sockets, even after SIGKILL). Nothing is parsed out of the server's output.

The parent-death signal of Linux (PR_SET_PDEATHSIG) would add nothing to the end-of-file, and
is worse: it fires when the thread that started the child ends, not the process, so a server
started from a short-lived thread would be killed while its parent lives on.

Light on purpose (no aiohttp): the client imports it for `--mock`.
"""

from __future__ import annotations

import collections
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from ._exceptions import ServerStartError
from ._faults import FaultConfig

__all__ = ["READY", "ServerProcess", "start_server_process"]

READY = "ready"
"""The first word of the line the server writes on its control socket once it serves."""

_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_LOG_LINES = 50
# How long to wait for the rest of a server's stderr once it exited: its workers may hold the
# pipe a moment longer.
_LOG_GRACE = 5.0


class ServerProcess:
    """A server started by `start_server_process`: its base `url` and its `process`.

    `stop()` ends it; used as a context manager, the end of the block does.
    """

    def __init__(
        self,
        url: str,
        process: subprocess.Popen[bytes],
        control: socket.socket,
        log: collections.deque[str],
        drain: threading.Thread,
    ) -> None:
        self.url = url
        self.process = process
        self._control = control
        self._log = log
        self._drain = drain

    @property
    def log(self) -> list[str]:
        """The last lines the server wrote on stderr (up to 50)."""
        return list(self._log)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> int:
        """Stop the server with SIGTERM (SIGKILL after `timeout` s), wait, return its exit code."""
        _stop(self.process, timeout)
        self._control.close()
        # A worker that outlived a killed server may hold the pipe a little longer: the drain
        # thread then closes it when it reads the end.
        self._drain.join(_LOG_GRACE)
        return self.process.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_server_process(
    *,
    workers: int | None = None,
    cache_dir: Path | None = None,
    faults: FaultConfig | None = None,
    args: Sequence[str] = (),
    echo: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready_timeout: float = _READY_TIMEOUT,
) -> ServerProcess:
    """Start an export server on a free loopback port in a child process; return once it serves.

    `workers`, `cache_dir` and `faults` are the server's options, `args` any further command
    line arguments (`["--verbose"]`). The server's stderr is read all along, so that it never
    blocks on a full pipe; `echo`, if given, gets each line (without its newline). `env` and
    `cwd` are the child's. The server stops when the parent process ends, however it ends.

    Raises ServerStartError, with the last lines of the server's stderr, if the server exits
    before it is ready or is not ready within `ready_timeout` seconds (it is stopped then).

        with start_server_process(workers=2) as server:
            urllib.request.urlopen(f"{server.url}/api/export")
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ours, theirs = socket.socketpair()
    try:
        listener.bind(("127.0.0.1", 0))
        # The server listens again with its own --backlog; until then connections wait here.
        listener.listen()
        command = [sys.executable, "-m", "export_server", "--fd", str(listener.fileno())]
        command += ["--control-fd", str(theirs.fileno()), *_options(workers, cache_dir, faults)]
        try:
            process = subprocess.Popen(
                [*command, *args],
                pass_fds=(listener.fileno(), theirs.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                cwd=cwd,
            )
        except OSError as exc:
            raise ServerStartError(f"cannot run {sys.executable}: {exc}", []) from None
    except BaseException:
        ours.close()
        raise
    finally:
        # The child has its own copies now; the parent must not keep the port open.
        listener.close()
        theirs.close()
    assert process.stderr is not None
    log: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
    drain = threading.Thread(
        target=_drain, args=(process.stderr, log, echo), name="export-server-log", daemon=True
    )
    drain.start()
    try:
        url = _wait_until_ready(ours, process, ready_timeout)
    except _NotReady as exc:
        _stop(process, _STOP_TIMEOUT)
        ours.close()
        # The whole log, the line that says why included, once the server has gone.
        drain.join(_LOG_GRACE)
        raise ServerStartError(exc.reason, log) from None
    except BaseException:
        _stop(process, _STOP_TIMEOUT)
        ours.close()
        raise
    return ServerProcess(url, process, ours, log, drain)


def _options(workers: int | None, cache_dir: Path | None, faults: FaultConfig | None) -> list[str]:
    options = [] if workers is None else ["--workers", str(workers)]
    if cache_dir is not None:
        options += ["--cache-dir", str(cache_dir)]
    if faults is not None:
        options += ["--fail-rate", repr(faults.fail_rate), "--error-rate", repr(faults.error_rate)]
        options += ["--latency", repr(faults.latency), "--chaos-seed", str(faults.seed)]
        options += ["--retry-after", str(faults.retry_after)]
    return options


class _NotReady(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _wait_until_ready(
    control: socket.socket, process: subprocess.Popen[bytes], timeout: float
) -> str:
    """The URL from the server's `ready` line; raises _NotReady."""
    deadline = time.monotonic() + timeout
    received = b""
    while b"\n" not in received:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            control.settimeout(remaining)
            data = control.recv(4096)
        except TimeoutError:
            raise _NotReady(f"not ready within {timeout:g} s") from None
        if not data:
            # The server closes its end only by exiting.
            try:
                code = process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise _NotReady("it closed its control socket but did not exit") from None
            raise _NotReady(f"it exited with code {code}")
        received += data
    control.settimeout(None)
    line = received.split(b"\n", 1)[0].decode("utf-8", "replace")
    word, _, url = line.partition(" ")
    if word != READY or not url.startswith("http://"):
        raise _NotReady(f"it announced {line!r} instead of {READY!r} and its URL")
    return url


def _drain(
    stream: IO[bytes], log: collections.deque[str], echo: Callable[[str], None] | None
) -> None:
    with stream:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            log.append(line)
            if echo is not None:
                echo(line)


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
