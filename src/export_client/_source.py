"""The export API as the client uses it, whatever carries it.

`ExportAPI` (HTTP, in `_http.py`) is the one the client builds for itself; `ExportClient`
accepts any other object with these methods, as httpx accepts a transport, so that tests (or
another transport) can stand in for HTTP. Failures worth retrying raise `Retryable`, a
failure to connect at all `Unreachable`; answers the API does not allow raise
`ServerResponseError`, and an unknown export `UnknownExportError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from ._metadata import DownloadInfo
from ._rate import RateLimit
from ._retry import Retryable

__all__ = ["BodyStream", "ExportSource", "Unreachable"]


class Unreachable(Retryable):
    """No connection could be made at all."""


class BodyStream(Protocol):
    """One download's body, in whatever pieces it arrives."""

    def chunks(
        self, *, speed_limit: float, speed_time: float, limit: RateLimit | None = None
    ) -> AsyncIterator[bytes]:
        """The body's bytes; a stream below `speed_limit` bytes/s for `speed_time` s fails.

        With `limit`, the bytes are read no faster than it allows (`RateLimit.take`).
        """
        ...


class ExportSource(Protocol):
    """The four endpoints of the export API."""

    async def export_ids(self) -> list[str]:
        """The ids of the exports offered."""
        ...

    async def download_ids(self, export_id: str) -> list[str]:
        """The ids of an export's downloads, in the server's order."""
        ...

    async def download_info(self, export_id: str, download_id: str) -> DownloadInfo:
        """A download's metadata."""
        ...

    def open_data(
        self, export_id: str, download_id: str
    ) -> AbstractAsyncContextManager[BodyStream]:
        """Opens a download's CSV body."""
        ...
