"""Exceptions raised by the export client.

ExportClientError
├── ServerUnreachableError      the server did not answer at all
├── ServerResponseError         the server answered, but not as the API says
├── UnknownExportError          the export id is not in the server's list
├── CsvFormatError              a body is not CSV that can be counted (raised by the pure core)
├── MockServerError             the mock server did not start (in _mock)
├── ClusterError                the Dask cluster could not be used (in _cluster)
├── Retryable                   a failure worth retrying, raised by sources (in _retry)
│   └── Unreachable             no connection at all (in _source)
└── DownloadError               one download could not be counted completely
    ├── DownloadFailedError     the stream broke, timed out or kept failing after every retry
    ├── IncompleteDownloadError the body held fewer or more rows than its metadata announced
    └── MalformedDownloadError  the body cannot be read as the expected CSV
"""

from __future__ import annotations

from typing import Any


class ExportClientError(Exception):
    """Base class for every error the client reports to its user.

    Every one pickles whole (a Dask task's error comes back to the client so): a class whose
    constructor takes other arguments than its message says which in `_arguments`.
    """

    def _arguments(self) -> tuple[Any, ...]:
        return tuple(self.args)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), self._arguments(), self.__dict__


class ServerUnreachableError(ExportClientError):
    """The server could not be reached at the given URL."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"Cannot reach the export server at {url} ({reason}).")

    def _arguments(self) -> tuple[Any, ...]:
        return self.url, self.reason


class ServerResponseError(ExportClientError):
    """The server answered with a status or a body that the API does not allow."""


class UnknownExportError(ExportClientError):
    """The export id is not one the server offers."""

    def __init__(self, export_id: str, known: list[str]) -> None:
        self.export_id = export_id
        self.known = known
        choices = ", ".join(known) if known else "none"
        super().__init__(f"Unknown export {export_id!r}; the server offers: {choices}.")

    def _arguments(self) -> tuple[Any, ...]:
        return self.export_id, self.known


class CsvFormatError(ExportClientError):
    """A body cannot be read as the CSV the counter expects."""


class DownloadError(ExportClientError):
    """A download could not be counted completely; names the download."""

    def __init__(self, download_id: str, message: str) -> None:
        self.download_id = download_id
        self.detail = message
        super().__init__(f"Download {download_id}: {message}")

    def _arguments(self) -> tuple[Any, ...]:
        return self.download_id, self.detail


class DownloadFailedError(DownloadError):
    """The download's stream failed on every attempt."""


class IncompleteDownloadError(DownloadError):
    """The download's row count does not match its metadata."""


class MalformedDownloadError(DownloadError):
    """The download's body is not the CSV the client can count."""
