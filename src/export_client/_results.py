"""Results: one download's verified counts, and the export's, reduced from them.

A count has one shape per stage: `BlockCount` while a body is being counted (bytes keys, a
mutable accumulator), `DownloadResult` once a download is verified against its metadata, and
`ExportReport` for the whole export.
"""

from __future__ import annotations

import builtins
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from ._layout import shown
from ._metadata import DownloadInfo
from ._stats import GroupStats

__all__ = ["MAX_MALFORMED_EXAMPLES", "BlockCount", "DownloadResult", "ExportReport"]

MAX_MALFORMED_EXAMPLES = 5


@dataclass
class BlockCount:
    """The counts of a block of lines, or merged, of many: a download's, say."""

    pairs: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    rows: int = 0  # data rows seen, malformed included, blank lines excluded
    malformed: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    blank_lines: int = 0
    # Statistics mode only: the accumulators of each (patient_id, event_type) group.
    groups: dict[tuple[bytes, bytes], GroupStats] | None = None

    def merge(self, other: BlockCount) -> None:
        """Adds `other`'s counts to these (examples up to the first few); takes its groups."""
        self.add_pairs(other.pairs)
        if other.groups is not None:
            self.add_groups(other.groups)
        self.rows += other.rows
        self.malformed += other.malformed
        self.blank_lines += other.blank_lines
        room = MAX_MALFORMED_EXAMPLES - len(self.malformed_examples)
        if room > 0:
            self.malformed_examples.extend(other.malformed_examples[:room])

    def add_pairs(self, pairs: Mapping[tuple[bytes, bytes], int]) -> None:
        own = self.pairs
        for key, count in pairs.items():
            own[key] = own.get(key, 0) + count

    def add_groups(self, groups: Mapping[tuple[bytes, bytes], GroupStats]) -> None:
        if self.groups is None:
            self.groups = {}
        own = self.groups
        for key, group in groups.items():
            mine = own.get(key)
            if mine is None:
                own[key] = group.copy()
            else:
                mine.merge(group)

    def add_malformed(self, line: bytes) -> None:
        self.malformed += 1
        if len(self.malformed_examples) < MAX_MALFORMED_EXAMPLES:
            self.malformed_examples.append(shown(line))

    def decoded_pairs(self) -> dict[tuple[str, str], int]:
        """The pairs with patient ids and event types decoded as UTF-8 (bad bytes replaced)."""
        decoded: Counter[tuple[str, str]] = Counter()
        for key, count in self.pairs.items():
            decoded[_decoded(key)] += count
        return dict(decoded)

    def decoded_groups(self) -> dict[tuple[str, str], GroupStats] | None:
        """The groups (statistics mode), their keys decoded as `decoded_pairs` does."""
        if self.groups is None:
            return None
        decoded: dict[tuple[str, str], GroupStats] = {}
        for key, group in self.groups.items():
            name = _decoded(key)
            if name in decoded:
                decoded[name].merge(group)
            else:
                decoded[name] = group.copy()
        return decoded


def _decoded(key: tuple[bytes, bytes]) -> tuple[str, str]:
    return key[0].decode("utf-8", errors="replace"), key[1].decode("utf-8", errors="replace")


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
    stats: Mapping[tuple[str, str], GroupStats] | None = None  # statistics mode only

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
            stats=counted.decoded_groups(),
        )


@dataclass(frozen=True)
class ExportReport:
    """The verified counts of a whole export, sorted, with the figures of the run.

    In statistics mode, `stats` has each patient's statistics per event type and
    `type_stats` each event type's over all patients, both sorted like the counts.
    """

    export_id: str
    patients: Mapping[str, Mapping[str, int]]
    totals: Mapping[str, int]
    downloads: tuple[DownloadResult, ...]
    seconds: float
    discovery_retries: int = 0
    stats: Mapping[str, Mapping[str, GroupStats]] | None = None
    type_stats: Mapping[str, GroupStats] | None = None

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
        stats, type_stats = _merged_stats(results)
        return cls(
            export_id=export_id,
            patients={
                patient: dict(sorted(by_patient[patient].items())) for patient in sorted(by_patient)
            },
            totals=dict(sorted(totals.items())),
            downloads=results,
            seconds=seconds,
            discovery_retries=discovery_retries,
            stats=stats,
            type_stats=type_stats,
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
        """The result document: the patients and the totals (counts, or in statistics mode
        each group's figures), indented, ending in "\\n"."""
        options = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
        if self.stats is None:
            options |= orjson.OPT_SORT_KEYS  # a statistics group keeps its fields' order
        return orjson.dumps(self.document(), option=options)

    def document(self) -> dict[str, object]:
        """The result as JSON-ready data, patients and event types sorted."""
        if self.stats is None or self.type_stats is None:
            return {
                "patients": {patient: dict(types) for patient, types in self.patients.items()},
                "totals": dict(self.totals),
            }
        return {
            "patients": {
                patient: {event_type: group.to_dict() for event_type, group in types.items()}
                for patient, types in self.stats.items()
            },
            "totals": {
                event_type: group.to_dict() for event_type, group in self.type_stats.items()
            },
        }

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
            **self.document(),
        }


def _merged_stats(
    results: tuple[DownloadResult, ...],
) -> tuple[dict[str, dict[str, GroupStats]] | None, dict[str, GroupStats] | None]:
    """Each patient's and each event type's statistics over all downloads, sorted."""
    if not results or any(result.stats is None for result in results):
        return None, None
    by_patient: dict[str, dict[str, GroupStats]] = {}
    by_type: dict[str, GroupStats] = {}
    for result in results:
        assert result.stats is not None
        for (patient, event_type), group in result.stats.items():
            for totals, name in (
                (by_patient.setdefault(patient, {}), event_type),
                (by_type, event_type),
            ):
                mine = totals.get(name)
                if mine is None:
                    totals[name] = group.copy()
                else:
                    mine.merge(group)
    patients = {p: dict(sorted(by_patient[p].items())) for p in sorted(by_patient)}
    return patients, dict(sorted(by_type.items()))
