"""Count the records of a healthcare data export, streamed off an export API.

>>> from export_client import count_export
>>> report = count_export("demo", "http://localhost:8000")  # doctest: +SKIP
>>> report.totals  # doctest: +SKIP
{'bp_dia': 9372, 'bp_sys': 9412}
"""

from __future__ import annotations

import importlib

# Not `from typing import TYPE_CHECKING`: importing typing takes a tenth of the time to start
# the CLI's signal handling (see __main__), and the package itself needs nothing from it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._body import BodyCount, BodyReader, count_body
    from ._client import ExportClient, count_export
    from ._cluster import ClusterError
    from ._counting import COUNTING_CORE, BlockCount, count_block
    from ._defaults import DEFAULT_CONCURRENCY, DEFAULT_SERVER
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
    from ._layout import CsvLayout
    from ._lines import LineSplitter
    from ._metadata import DownloadInfo
    from ._mock import MockServerError, mock_server
    from ._progress import NoProgress, ProgressListener, Retry
    from ._rate import RateLimit
    from ._results import DownloadResult, ExportReport
    from ._retry import Retryable, RetryPolicy
    from ._source import BodyStream, ExportSource, Unreachable
    from ._stats import DEFAULT_NORMAL_RANGES, GroupStats

__version__ = "0.2.0"

# Imported on first use: `import export_client` stays cheap, and so does using only the
# counting core, without aiohttp and the rest of the client.
_MODULES = {
    "_body": ("BodyCount", "BodyReader", "count_body"),
    "_client": ("ExportClient", "count_export"),
    "_cluster": ("ClusterError",),
    "_counting": ("COUNTING_CORE", "BlockCount", "count_block"),
    "_defaults": ("DEFAULT_CONCURRENCY", "DEFAULT_SERVER"),
    "_exceptions": (
        "CsvFormatError",
        "DownloadError",
        "DownloadFailedError",
        "ExportClientError",
        "IncompleteDownloadError",
        "MalformedDownloadError",
        "ServerResponseError",
        "ServerUnreachableError",
        "UnknownExportError",
    ),
    "_layout": ("CsvLayout",),
    "_lines": ("LineSplitter",),
    "_metadata": ("DownloadInfo",),
    "_mock": ("MockServerError", "mock_server"),
    "_progress": ("NoProgress", "ProgressListener", "Retry"),
    "_rate": ("RateLimit",),
    "_results": ("DownloadResult", "ExportReport"),
    "_retry": ("RetryPolicy", "Retryable"),
    "_source": ("BodyStream", "ExportSource", "Unreachable"),
    "_stats": ("DEFAULT_NORMAL_RANGES", "GroupStats"),
}
_HOMES = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "COUNTING_CORE",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_NORMAL_RANGES",
    "DEFAULT_SERVER",
    "BlockCount",
    "BodyCount",
    "BodyReader",
    "BodyStream",
    "ClusterError",
    "CsvFormatError",
    "CsvLayout",
    "DownloadError",
    "DownloadFailedError",
    "DownloadInfo",
    "DownloadResult",
    "ExportClient",
    "ExportClientError",
    "ExportReport",
    "ExportSource",
    "GroupStats",
    "IncompleteDownloadError",
    "LineSplitter",
    "MalformedDownloadError",
    "MockServerError",
    "NoProgress",
    "ProgressListener",
    "RateLimit",
    "Retry",
    "RetryPolicy",
    "Retryable",
    "ServerResponseError",
    "ServerUnreachableError",
    "UnknownExportError",
    "Unreachable",
    "count_block",
    "count_body",
    "count_export",
    "mock_server",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'export_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
