"""The project's own mock server, started for one run on a free loopback port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ._exceptions import ExportClientError


class MockServerError(ExportClientError):
    """The mock server could not be started."""


@contextmanager
def mock_server(*, show_log: bool = False, start_timeout: float = 30.0) -> Iterator[str]:
    """Starts the project's server on a free loopback port and yields its base URL.

    The server stops at the end of the block, and also when this process dies, however it dies
    (see `export_server.start_server_process`). With `show_log`, its stderr is echoed on ours.
    """
    # Imported here: only --mock needs the server package.
    from export_server import ServerStartError, start_server_process

    try:
        server = start_server_process(echo=_echo if show_log else None, ready_timeout=start_timeout)
    except ServerStartError as exc:
        raise MockServerError(str(exc)) from exc
    with server:
        yield server.url


def _echo(line: str) -> None:
    sys.stderr.write(f"[server] {line}\n")
