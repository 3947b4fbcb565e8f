"""Results: one download's verified counts, and the export's, reduced from them.

A count has one shape per stage: `BlockCount` while a body is being counted (bytes keys, a
mutable accumulator), `DownloadResult` once a download is verified against its metadata, and
`ExportReport` for the whole export.
"""

from __future__ import annotations

import builtins
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from ._counting import BlockCount
from ._metadata import DownloadInfo

__all__ = ["DownloadResult", "ExportReport"]


@dataclass(frozen=True)
class DownloadResult:
    """One download's verified counts, how they were made, and what surprised."""

    download_id: str
    pairs: Mapping[tuple[str, str], int]  # (patient_id, event_type) -> rows
    rows: int  # data rows read, malformed included, blank lines excluded
    malformed: int
    malformed_examples: tuple[str, ...]
    bytes: int
    attempts: int
    unexpected_patients: tuple[str, ...] = ()
    """Patients counted that the download's metadata does not list."""
    unexpected_event_types: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, info: DownloadInfo, counted: BlockCount, *, nbytes: int, attempts: int
    ) -> DownloadResult:
        """The result of a body whose counts are `counted`, checked against its metadata."""
        pairs = counted.decoded_pairs()
        patients = {patient for patient, _ in pairs}
        event_types = {event_type for _, event_type in pairs}
        return cls(
            download_id=info.id,
            pairs=pairs,
            rows=counted.rows,
            malformed=counted.malformed,
            malformed_examples=tuple(counted.malformed_examples),
            bytes=nbytes,
            attempts=attempts,
            unexpected_patients=tuple(sorted(patients - set(info.patients))),
            unexpected_event_types=tuple(sorted(event_types - set(info.event_types))),
        )


@dataclass(frozen=True)
class ExportReport:
    """The verified counts of a whole export, sorted, with the figures of the run."""

    export_id: str
    patients: Mapping[str, Mapping[str, int]]
    totals: Mapping[str, int]
    downloads: tuple[DownloadResult, ...]
    seconds: float
    discovery_retries: int = 0

    @classmethod
    def of(
        cls,
        export_id: str,
        downloads: Iterable[DownloadResult],
        *,
        seconds: float,
        discovery_retries: int = 0,
    ) -> ExportReport:
        """Reduces the downloads' counts into the export's."""
        results = tuple(downloads)
        by_patient: dict[str, Counter[str]] = {}
        totals: Counter[str] = Counter()
        for result in results:
            for (patient, event_type), count in result.pairs.items():
                by_patient.setdefault(patient, Counter())[event_type] += count
                totals[event_type] += count
        return cls(
            export_id=export_id,
            patients={
                patient: dict(sorted(by_patient[patient].items())) for patient in sorted(by_patient)
            },
            totals=dict(sorted(totals.items())),
            downloads=results,
            seconds=seconds,
            discovery_retries=discovery_retries,
        )

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

    def to_json(self) -> builtins.bytes:
        """The result document: only the patients and the totals, indented, ending in "\\n"."""
        document = {
            "patients": {patient: dict(types) for patient, types in self.patients.items()},
            "totals": dict(self.totals),
        }
        return orjson.dumps(
            document,
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE,
        )

    def to_dict(self) -> dict[str, object]:
        """The whole report as JSON-ready data: the run's figures and every download's."""
        return {
            "export_id": self.export_id,
            "rows": self.rows,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "retries": self.retries,
            "discovery_retries": self.discovery_retries,
            "malformed": self.malformed,
            "downloads": [
                {
                    "id": download.download_id,
                    "rows": download.rows,
                    "bytes": download.bytes,
                    "attempts": download.attempts,
                    "malformed": download.malformed,
                    "malformed_examples": list(download.malformed_examples),
                    "unexpected_patients": list(download.unexpected_patients),
                    "unexpected_event_types": list(download.unexpected_event_types),
                }
                for download in self.downloads
            ],
            "patients": {patient: dict(types) for patient, types in self.patients.items()},
            "totals": dict(self.totals),
        }
