"""The export catalog: which exports exist and the deterministic metadata of their downloads."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = ["REFERENCE_CATALOG", "Catalog", "DownloadSpec", "ExportSpec", "download_uuid"]


@dataclass(frozen=True)
class ExportSpec:
    """One export of the catalog: how many downloads it has and how their rows are drawn."""

    id: str
    downloads: int
    min_rows: int
    max_rows: int
    event_types: tuple[str, ...]
    patient_pool: tuple[str, ...]
    first_start: datetime
    step: timedelta


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
