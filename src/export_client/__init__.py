"""Count the records of a healthcare data export, streamed off an export API.

>>> from export_client import count_export
>>> report = count_export("demo", "http://localhost:8000")  # doctest: +SKIP
>>> report.counts.totals  # doctest: +SKIP
{'bp_dia': 9372, 'bp_sys': 9412}
"""

from ._client import DEFAULT_CONCURRENCY, DEFAULT_SERVER, ExportClient, count_export
from ._counting import BlockCount, CsvLayout, DownloadCounter, count_block
from ._exceptions import (
    CsvFormatError,
    DownloadError,
    DownloadFailedError,
    ExportClientError,
    IncompleteDownloadError,
    MalformedDownloadError,
    ServerResponseError,
    ServerUnreachableError,
    UnknownExportError,
)
from ._lines import LineSplitter
from ._mock import MockServerError, mock_server
from ._models import DownloadInfo, DownloadReport, ExportReport
from ._progress import NoProgress, ProgressListener, TerminalProgress
from ._results import DownloadCount, ExportCount, merge_counts
from ._retry import RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_SERVER",
    "BlockCount",
    "CsvFormatError",
    "CsvLayout",
    "DownloadCount",
    "DownloadCounter",
    "DownloadError",
    "DownloadFailedError",
    "DownloadInfo",
    "DownloadReport",
    "ExportClient",
    "ExportClientError",
    "ExportCount",
    "ExportReport",
    "IncompleteDownloadError",
    "LineSplitter",
    "MalformedDownloadError",
    "MockServerError",
    "NoProgress",
    "ProgressListener",
    "RetryPolicy",
    "ServerResponseError",
    "ServerUnreachableError",
    "TerminalProgress",
    "UnknownExportError",
    "count_block",
    "count_export",
    "merge_counts",
    "mock_server",
]
