"""Count the records of a healthcare data export, streamed off an export API.

>>> from export_client import count_export
>>> report = count_export("demo", "http://localhost:8000")  # doctest: +SKIP
>>> report.counts.totals  # doctest: +SKIP
{'bp_dia': 9372, 'bp_sys': 9412}
"""

from __future__ import annotations

import importlib

# Not `from typing import TYPE_CHECKING`: importing typing takes a tenth of the time to start
# the CLI's signal handling (see __main__), and the package itself needs nothing from it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._client import DEFAULT_CONCURRENCY, DEFAULT_SERVER, ExportClient, count_export
    from ._counting import COUNTING_CORE, BlockCount, CsvLayout, DownloadCounter, count_block
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

__version__ = "0.2.0"

# Imported on first use: `import export_client` stays cheap, and so does using only the
# counting core, without aiohttp and the rest of the client.
_MODULES = {
    "_client": ("DEFAULT_CONCURRENCY", "DEFAULT_SERVER", "ExportClient", "count_export"),
    "_counting": ("COUNTING_CORE", "BlockCount", "CsvLayout", "DownloadCounter", "count_block"),
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
    "_lines": ("LineSplitter",),
    "_mock": ("MockServerError", "mock_server"),
    "_models": ("DownloadInfo", "DownloadReport", "ExportReport"),
    "_progress": ("NoProgress", "ProgressListener", "TerminalProgress"),
    "_results": ("DownloadCount", "ExportCount", "merge_counts"),
    "_retry": ("RetryPolicy",),
}
_HOMES = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "COUNTING_CORE",
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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'export_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
