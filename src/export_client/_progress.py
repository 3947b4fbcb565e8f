"""What happens during a run, as events for whoever shows progress (the CLI, say)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ._metadata import DownloadInfo

__all__ = ["NoProgress", "ProgressListener", "Retry"]


@dataclass(frozen=True)
class Retry:
    """A request or a download attempt failed and is tried again after `delay` seconds.

    For a download, `rows` and `nbytes` are what the failed attempt had counted and read:
    they no longer count towards the result.
    """

    what: str  # "the export list", "download <id>", ...
    reason: str
    delay: float
    download_id: str | None = None
    rows: int = 0
    nbytes: int = 0


class ProgressListener(Protocol):
    """Receives what happens during a run; every method must be cheap."""

    def discovering(self) -> None: ...
    def started(self, downloads: Sequence[DownloadInfo]) -> None: ...
    def download_started(self, download_id: str) -> None: ...
    def received(self, download_id: str, nbytes: int) -> None: ...
    def counted(self, download_id: str, rows: int) -> None: ...
    def retrying(self, retry: Retry) -> None: ...
    def download_finished(self, download_id: str) -> None: ...
    def finished(self) -> None: ...


class NoProgress:
    """Ignores every event."""

    def discovering(self) -> None:
        pass

    def started(self, downloads: Sequence[DownloadInfo]) -> None:
        pass

    def download_started(self, download_id: str) -> None:
        pass

    def received(self, download_id: str, nbytes: int) -> None:
        pass

    def counted(self, download_id: str, rows: int) -> None:
        pass

    def retrying(self, retry: Retry) -> None:
        pass

    def download_finished(self, download_id: str) -> None:
        pass

    def finished(self) -> None:
        pass
