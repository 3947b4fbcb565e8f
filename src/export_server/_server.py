"""Running the application: in the foreground (the CLI) or in a background thread (tests)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from ._app import create_app
from ._bodies import DEFAULT_WRITE_TIMEOUT
from ._catalog import REFERENCE_CATALOG, Catalog
from ._exceptions import InheritedSocketError, ListenError, PortInUseError
from ._faults import FaultConfig

__all__ = [
    "DEFAULT_BACKLOG",
    "MAX_BACKLOG",
    "MAX_FD",
    "control_socket",
    "listening_socket",
    "running_server",
    "serve",
]

# Streams still running at shutdown are cut after this long instead of delaying the stop.
_SHUTDOWN_TIMEOUT = 1.0
# Connections the kernel completes before the server accepts them: 500 clients connecting at
# once overflowed 128, and each overflow cost its client a 1 s SYN retry. The kernel caps it at
# net.core.somaxconn.
DEFAULT_BACKLOG = 1024
# Both are C ints to the kernel.
MAX_BACKLOG = 2**31 - 1
MAX_FD = 2**31 - 1


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    app: web.Application,
    *,
    stop: asyncio.Event,
    on_listening: Callable[[str], None],
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
    access_log: bool = False,
    backlog: int = DEFAULT_BACKLOG,
) -> None:
    """Serve `app` until `stop` is set, calling `on_listening` with the base URL once bound.

    It listens on `host` and `port` (default 127.0.0.1 and a free port), or on `sock`, a bound
    and listening TCP socket (a supervisor's, see `listening_socket`), which it then owns and
    closes. `backlog` is the listen backlog, capped by the kernel at net.core.somaxconn. The
    address is bound before the app starts (and its workers with it). Raises ListenError
    (PortInUseError if the address is taken) if the server cannot listen there, and what the
    app's startup raises (CacheDirectoryError, WorkerError). Everything the app started is
    stopped before this returns, however it returns.
    """
    if not 1 <= backlog <= MAX_BACKLOG:
        raise ValueError(f"backlog must be from 1 to {MAX_BACKLOG}, got {backlog}.")
    if sock is not None and (host is not None or port is not None):
        raise TypeError("Pass either a socket or a host and port to listen on, not both.")
    if sock is not None:
        sockets = [sock]
        host, port = sock.getsockname()[:2]
    else:
        host = "127.0.0.1" if host is None else host
        sockets = await _bind(host, 0 if port is None else port, backlog)
    # aiohttp's default access logger, unless it is turned off with None.
    quiet: dict[str, Any] = {} if access_log else {"access_log": None}
    try:
        runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT, **quiet
        )
        try:
            await runner.setup()
            for listening in sockets:
                await web.SockSite(runner, listening, backlog=backlog).start()
            on_listening(_url(host, sockets[0].getsockname()[1]))
            await stop.wait()
        finally:
            # Also after a failed setup: it stops whatever part of the app had started.
            await runner.cleanup()
    finally:
        for listening in sockets:
            listening.close()


def listening_socket(fd: int) -> socket.socket:
    """The bound and listening TCP socket inherited as file descriptor `fd`.

    Raises InheritedSocketError if `fd` is not one.
    """
    role = "the listening socket"
    sock = _inherited(fd, role)
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        sock.close()
        raise InheritedSocketError(fd, role, "it is not a TCP socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.close()
        raise InheritedSocketError(fd, role, "it is not listening")
    return sock


def control_socket(fd: int) -> socket.socket:
    """The stream socket inherited as file descriptor `fd` to talk to the parent on.

    Raises InheritedSocketError if `fd` is not one.
    """
    role = "the control socket"
    sock = _inherited(fd, role)
    if sock.type != socket.SOCK_STREAM:
        sock.close()
        raise InheritedSocketError(fd, role, "it is not a stream socket")
    return sock


def _inherited(fd: int, role: str) -> socket.socket:
    if not 0 <= fd <= MAX_FD:
        raise InheritedSocketError(fd, role, "it is not open")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        reasons = {errno.EBADF: "it is not open", errno.ENOTSOCK: "it is not a socket"}
        reason = reasons.get(exc.errno or 0, (exc.strerror or str(exc)).lower())
        raise InheritedSocketError(fd, role, reason) from None
    # Ours alone: processes this one starts (the workers) must not keep it open.
    sock.set_inheritable(False)
    return sock


async def _bind(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets on every address of `host`; raises ListenError.

    Connections wait in the backlog until the app has started and its sites accept them.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(host, port, f"the host cannot be resolved ({exc.strerror})") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            # Listen at once: a bound socket that does not listen yet does not keep another
            # server (with SO_REUSEADDR) from binding the same port meanwhile.
            sock.listen(backlog)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise _listen_error(host, port, exc) from None
    return sockets


def _listen_error(host: str, port: int, exc: OSError) -> ListenError:
    if exc.errno == errno.EADDRINUSE:
        return PortInUseError(host, port)
    if exc.errno == errno.EACCES:
        return ListenError(host, port, "permission denied (ports below 1024 need privileges)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ListenError(host, port, "the address is not one of this machine's")
    return ListenError(host, port, (exc.strerror or str(exc)).lower())


@contextmanager
def running_server(
    catalog: Catalog = REFERENCE_CATALOG,
    *,
    workers: int | None = None,
    cache_dir: Path | None = None,
    faults: FaultConfig | None = None,
    write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
    host: str = "127.0.0.1",
    port: int = 0,
    backlog: int = DEFAULT_BACKLOG,
) -> Iterator[str]:
    """Run an export server in a background thread and yield its base URL.

    The server gets its own event loop in its own thread, so this is for synchronous code (tests,
    fixtures); from a coroutine it would block the caller's loop while the server starts and
    stops. The options before `host` are those of `create_app`; `port=0` picks a free port and
    `backlog` is the listen backlog. On exit the server and its workers are stopped.

        with running_server(workers=1) as url:
            urllib.request.urlopen(f"{url}/api/export")
    """
    app = create_app(
        catalog, workers=workers, cache_dir=cache_dir, faults=faults, write_timeout=write_timeout
    )
    started: concurrent.futures.Future[str] = concurrent.futures.Future()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(
                serve(
                    app,
                    host=host,
                    port=port,
                    stop=stop,
                    on_listening=started.set_result,
                    backlog=backlog,
                )
            )
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                raise
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=run, name="export-server", daemon=True)
    thread.start()
    try:
        url = started.result()
    except BaseException:
        thread.join()
        raise
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join()
