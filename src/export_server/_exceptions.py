"""Exceptions of the export server.

The hierarchy:

    ExportServerError
    ├── PortInUseError
    └── WorkerError
        └── WorkerCrashedError
"""

from __future__ import annotations

__all__ = ["ExportServerError", "PortInUseError", "WorkerCrashedError", "WorkerError"]


class ExportServerError(Exception):
    """Base class of every error the export server reports on purpose."""


class PortInUseError(ExportServerError):
    """The address the server should listen on is already taken by another process."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"Cannot listen on {host}:{port}: the address is already in use.")
        self.host = host
        self.port = port


class WorkerError(ExportServerError):
    """A generation worker could not produce the body it was asked for."""


class WorkerCrashedError(WorkerError):
    """A generation worker process died while it was generating a body."""
