"""Exceptions of the export server.

The hierarchy:

    ExportServerError
    ├── CacheDirectoryError
    ├── InheritedSocketError
    ├── ListenError
    │   └── PortInUseError
    ├── ServerStartError
    └── WorkerError
        └── WorkerCrashedError
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CacheDirectoryError",
    "ExportServerError",
    "InheritedSocketError",
    "ListenError",
    "PortInUseError",
    "ServerStartError",
    "WorkerCrashedError",
    "WorkerError",
]


class ExportServerError(Exception):
    """Base class of every error the export server reports on purpose."""


class CacheDirectoryError(ExportServerError):
    """The cache directory cannot be created or read."""

    def __init__(self, directory: Path, reason: str) -> None:
        super().__init__(f"Cannot use the cache directory {directory}: {reason}.")
        self.directory = directory


class InheritedSocketError(ExportServerError):
    """A file descriptor given to the server (`--fd`, `--control-fd`) is not a usable socket."""

    def __init__(self, fd: int, role: str, reason: str) -> None:
        super().__init__(f"Cannot use file descriptor {fd} as {role}: {reason}.")
        self.fd = fd


class ListenError(ExportServerError):
    """The server cannot listen on the address it was given."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"Cannot listen on {host}:{port}: {reason}.")
        self.host = host
        self.port = port


class PortInUseError(ListenError):
    """The address the server should listen on is already taken by another process."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, "the address is already in use")


class ServerStartError(ExportServerError):
    """A server process did not become ready: it exited first, or took too long.

    `log` holds the last lines it wrote on stderr; the message ends with the last one that is
    not blank (the server's errors are one line each).
    """

    def __init__(self, reason: str, log: Sequence[str]) -> None:
        self.log = list(log)
        last = next((line.strip() for line in reversed(self.log) if line.strip()), None)
        detail = f": {last}" if last is not None else "."
        super().__init__(f"The export server did not start ({reason}){detail}")


class WorkerError(ExportServerError):
    """A generation worker could not produce the body it was asked for."""


class WorkerCrashedError(WorkerError):
    """A generation worker process died while it was generating a body."""
