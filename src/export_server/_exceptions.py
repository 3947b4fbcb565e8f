"""Exceptions of the export server.

The hierarchy:

    ExportServerError
    ├── CacheDirectoryError
    ├── ListenError
    │   └── PortInUseError
    └── WorkerError
        └── WorkerCrashedError
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CacheDirectoryError",
    "ExportServerError",
    "ListenError",
    "PortInUseError",
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


class WorkerError(ExportServerError):
    """A generation worker could not produce the body it was asked for."""


class WorkerCrashedError(WorkerError):
    """A generation worker process died while it was generating a body."""
