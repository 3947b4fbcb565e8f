"""What the API says about a download."""

from __future__ import annotations

from dataclasses import dataclass


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
