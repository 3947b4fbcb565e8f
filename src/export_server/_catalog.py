"""The export catalog: which exports exist and the deterministic metadata of their downloads."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "EVENT_VALUE_PARAMS",
    "REFERENCE_CATALOG",
    "Catalog",
    "DownloadSpec",
    "ExportSpec",
    "download_uuid",
]

EVENT_VALUE_PARAMS: dict[str, tuple[int, int, int, int]] = {
    "heart_rate": (75, 15, 30, 200),
    "spo2": (97, 2, 70, 100),
    "bp_sys": (120, 20, 60, 250),
    "bp_dia": (80, 15, 30, 150),
}
"""Per event type: mean and standard deviation of its gaussian, then its lower and upper clamp."""


@dataclass(frozen=True)
class ExportSpec:
    """One export of the catalog: how many downloads it has and how their rows are drawn.

    Raises ValueError for a value that the generation cannot use.
    """

    id: str
    downloads: int
    min_rows: int
    max_rows: int
    event_types: tuple[str, ...]
    patient_pool: tuple[str, ...]
    first_start: datetime
    step: timedelta

    def __post_init__(self) -> None:
        if self.downloads < 1:
            raise ValueError(
                f"Export {self.id!r} needs at least one download, got {self.downloads}."
            )
        if not 1 <= self.min_rows <= self.max_rows:
            raise ValueError(
                f"Export {self.id!r} needs 1 <= min_rows <= max_rows, got min_rows "
                f"{self.min_rows} and max_rows {self.max_rows}."
            )
        if not self.event_types:
            raise ValueError(f"Export {self.id!r} needs at least one event type.")
        unknown = [name for name in self.event_types if name not in EVENT_VALUE_PARAMS]
        if unknown:
            raise ValueError(
                f"Export {self.id!r} has unknown event types {unknown}; the known ones are "
                f"{sorted(EVENT_VALUE_PARAMS)}."
            )
        if len(self.patient_pool) < 2:
            raise ValueError(
                f"Export {self.id!r} needs a pool of at least 2 patients, got "
                f"{len(self.patient_pool)}."
            )
        if self.first_start.tzinfo is not None:
            raise ValueError(
                f"Export {self.id!r} needs a naive first_start (the API's times have no time "
                f"zone), got {self.first_start.isoformat()}."
            )
        if self.step <= timedelta(0):
            raise ValueError(f"Export {self.id!r} needs a positive step, got {self.step}.")


@dataclass(frozen=True)
class DownloadSpec:
    """One download of an export: everything needed to generate its CSV body."""

    export_id: str
    index: int
    id: uuid.UUID
    rows: int
    patients: tuple[str, ...]
    event_types: tuple[str, ...]
    start_time: datetime
    end_time: datetime
    step: timedelta

    def metadata(self) -> dict[str, Any]:
        """The metadata payload exactly as `GET /api/export/{export}/{download}` returns it."""
        return {
            "id": str(self.id),
            "rows": self.rows,
            "event_types": list(self.event_types),
            "patients": list(self.patients),
            "start_time": self.start_time.isoformat(),
            "end_time": self.end_time.isoformat(),
        }


def download_uuid(export_id: str, index: int) -> uuid.UUID:
    """The id of download `index` of `export_id`: SHA-256 of `f"{export_id}_{index}"` as UUID4."""
    digest = hashlib.sha256(f"{export_id}_{index}".encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def _plan_downloads(export: ExportSpec) -> tuple[DownloadSpec, ...]:
    rng = random.Random(export.id)
    pool = list(export.patient_pool)
    start = export.first_start
    downloads = []
    for index in range(export.downloads):
        rows = rng.randint(export.min_rows, export.max_rows)
        k = min(len(pool), rng.randint(2, len(pool)))
        patients = tuple(rng.sample(pool, k))
        end = start + rows * export.step
        downloads.append(
            DownloadSpec(
                export_id=export.id,
                index=index,
                id=download_uuid(export.id, index),
                rows=rows,
                patients=patients,
                event_types=export.event_types,
                start_time=start,
                end_time=end,
                step=export.step,
            )
        )
        start = end
    return tuple(downloads)


class Catalog:
    """The exports a server offers, with their downloads computed once, in generation order."""

    def __init__(self, exports: Iterable[ExportSpec]) -> None:
        self.exports = tuple(exports)
        for export in self.exports:
            if not isinstance(export, ExportSpec):
                raise TypeError(f"A catalog holds ExportSpec values, got {export!r}.")
        ids = [export.id for export in self.exports]
        if len(set(ids)) != len(ids):
            raise ValueError(f"Export ids must be unique, got {ids}.")
        self._downloads = {export.id: _plan_downloads(export) for export in self.exports}
        self._by_id = {
            (d.export_id, d.id): d for planned in self._downloads.values() for d in planned
        }

    @property
    def export_ids(self) -> list[str]:
        """The export ids, in catalog order."""
        return [export.id for export in self.exports]

    def downloads(self, export_id: str) -> list[DownloadSpec] | None:
        """The downloads of an export in generation order, or None for an unknown export."""
        downloads = self._downloads.get(export_id)
        return list(downloads) if downloads is not None else None

    def download(self, export_id: str, download_id: uuid.UUID) -> DownloadSpec | None:
        """One download of an export, or None if the export has no such download."""
        return self._by_id.get((export_id, download_id))


def _pool(prefix: str, size: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{n:03d}" for n in range(1, size + 1))


_FIRST_START = datetime(2025, 8, 26)

REFERENCE_CATALOG = Catalog(
    [
        ExportSpec(
            id="demo",
            downloads=2,
            min_rows=5_000,
            max_rows=10_000,
            event_types=("bp_sys", "bp_dia"),
            patient_pool=_pool("P", 4),
            first_start=_FIRST_START,
            step=timedelta(seconds=7),
        ),
        ExportSpec(
            id="small",
            downloads=10,
            min_rows=500_000,
            max_rows=1_000_000,
            event_types=("heart_rate", "spo2"),
            patient_pool=_pool("S", 6),
            first_start=_FIRST_START,
            step=timedelta(seconds=3),
        ),
        ExportSpec(
            id="large",
            downloads=20,
            min_rows=5_000_000,
            max_rows=10_000_000,
            event_types=("heart_rate", "spo2", "bp_sys", "bp_dia"),
            patient_pool=_pool("L", 20),
            first_start=_FIRST_START,
            step=timedelta(milliseconds=300),
        ),
    ]
)
"""The three exports of the reference server: demo, small and large."""
