"""Counting results: one download's counts, and their reduction into the export's result."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

__all__ = ["DownloadCount", "ExportCount", "merge_counts"]


@dataclass(frozen=True)
class DownloadCount:
    """The counts of one download's body."""

    pairs: Mapping[tuple[str, str], int]  # (patient_id, event_type) -> rows
    rows: int  # data rows read, malformed included, blank lines excluded
    malformed: int
    malformed_examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportCount:
    """The counts of a whole export, sorted by patient and by event type."""

    patients: Mapping[str, Mapping[str, int]]
    totals: Mapping[str, int]
    rows: int
    malformed: int

    def to_json(self) -> bytes:
        """The result document: only the patients and the totals, indented, ending in "\\n"."""
        document = {
            "patients": {patient: dict(types) for patient, types in self.patients.items()},
            "totals": dict(self.totals),
        }
        return orjson.dumps(
            document,
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE,
        )


def merge_counts(results: Iterable[DownloadCount]) -> ExportCount:
    """Reduce the downloads' counts into the export's counts."""
    by_patient: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    rows = 0
    malformed = 0
    for result in results:
        rows += result.rows
        malformed += result.malformed
        for (patient, event_type), count in result.pairs.items():
            by_patient.setdefault(patient, Counter())[event_type] += count
            totals[event_type] += count
    return ExportCount(
        patients={
            patient: dict(sorted(by_patient[patient].items())) for patient in sorted(by_patient)
        },
        totals=dict(sorted(totals.items())),
        rows=rows,
        malformed=malformed,
    )
