"""What the API says about a download, and what a run reports about itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._results import ExportCount


@dataclass(frozen=True)
class DownloadInfo:
    """A download's metadata as the API announces it."""

    id: str
    rows: int
    patients: tuple[str, ...]
    event_types: tuple[str, ...]
    start_time: str
    end_time: str

    def to_dict(self) -> dict[str, object]:
        """The metadata in the API's own shape."""
        return {
            "id": self.id,
            "rows": self.rows,
            "patients": list(self.patients),
            "event_types": list(self.event_types),
            "start_time": self.start_time,
            "end_time": self.end_time,
        }


@dataclass(frozen=True)
class DownloadReport:
    """How one download was counted: its verified row count and what it took."""

    download_id: str
    rows: int
    bytes: int
    attempts: int
    malformed: int
    malformed_examples: tuple[str, ...]
    unexpected_patients: tuple[str, ...] = ()
    unexpected_event_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportReport:
    """The verified counts of a whole export, with the figures of the run that made them."""

    export_id: str
    counts: ExportCount
    downloads: tuple[DownloadReport, ...]
    seconds: float
    warnings: tuple[str, ...] = field(default=())
    discovery_retries: int = 0

    @property
    def rows(self) -> int:
        return sum(download.rows for download in self.downloads)

    @property
    def bytes(self) -> int:
        return sum(download.bytes for download in self.downloads)

    @property
    def retries(self) -> int:
        """Every retry of the run: of discovery requests, and of downloads."""
        return self.discovery_retries + sum(download.attempts - 1 for download in self.downloads)

    @property
    def malformed(self) -> int:
        return sum(download.malformed for download in self.downloads)
