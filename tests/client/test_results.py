"""Tests for the results: a download's, and the export's reduced from them."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from export_client._metadata import DownloadInfo
from export_client._results import BlockCount, DownloadResult, ExportReport


def result(
    pairs: dict[tuple[str, str], int],
    rows: int,
    malformed: int,
    malformed_examples: tuple[str, ...] = (),
) -> DownloadResult:
    return DownloadResult("d", pairs, rows, malformed, malformed_examples, bytes=0, attempts=1)


def merge_counts(results: Iterable[DownloadResult]) -> ExportReport:
    return ExportReport.of("e", results, seconds=0.0)


def test_a_download_result_decodes_and_finds_surprises() -> None:
    info = DownloadInfo("d1", 3, ("P1", "P2"), ("a",), "", "")
    counted = BlockCount({(b"P1", b"a"): 1, (b"P\xff", b"b"): 2}, rows=4, malformed=1)
    download = DownloadResult.of(info, counted, nbytes=100, attempts=2)
    assert download.pairs == {("P1", "a"): 1, ("P\ufffd", "b"): 2}
    assert download.unexpected_patients == ("P\ufffd",)
    assert download.unexpected_event_types == ("b",)
    assert (download.rows, download.malformed, download.bytes, download.attempts) == (4, 1, 100, 2)


def test_merge_sums_and_sorts() -> None:
    first = result(
        pairs={("P2", "spo2"): 3, ("P1", "spo2"): 1, ("P1", "heart_rate"): 2},
        rows=7,
        malformed=1,
        malformed_examples=("bad",),
    )
    second = result(pairs={("P1", "spo2"): 4, ("P10", "bp_sys"): 5}, rows=9, malformed=0)
    merged = merge_counts([first, second])
    assert merged.patients == {
        "P1": {"heart_rate": 2, "spo2": 5},
        "P10": {"bp_sys": 5},
        "P2": {"spo2": 3},
    }
    assert merged.totals == {"bp_sys": 5, "heart_rate": 2, "spo2": 8}
    assert (merged.rows, merged.malformed) == (16, 1)
    assert list(merged.patients) == ["P1", "P10", "P2"]
    assert list(merged.patients["P1"]) == ["heart_rate", "spo2"]
    assert list(merged.totals) == ["bp_sys", "heart_rate", "spo2"]


def test_merge_accepts_a_generator() -> None:
    counts = (result(pairs={("P", "a"): 1}, rows=1, malformed=0) for _ in range(3))
    assert merge_counts(counts).totals == {"a": 3}


def test_to_json_exact_bytes() -> None:
    merged = merge_counts(
        [
            result(pairs={("P002", "bp_sys"): 2, ("P001", "bp_dia"): 1}, rows=4, malformed=1),
            result(pairs={("P001", "bp_sys"): 3}, rows=3, malformed=0),
        ]
    )
    assert merged.to_json() == (
        b"{\n"
        b'  "patients": {\n'
        b'    "P001": {\n'
        b'      "bp_dia": 1,\n'
        b'      "bp_sys": 3\n'
        b"    },\n"
        b'    "P002": {\n'
        b'      "bp_sys": 2\n'
        b"    }\n"
        b"  },\n"
        b'  "totals": {\n'
        b'    "bp_dia": 1,\n'
        b'    "bp_sys": 5\n'
        b"  }\n"
        b"}\n"
    )


def test_to_json_sorts_even_unsorted_mappings() -> None:
    report = ExportReport(
        export_id="e",
        patients={"b": {"y": 1, "x": 2}, "a": {"z": 3}},
        totals={"z": 3, "y": 1, "x": 2},
        downloads=(),
        seconds=0.0,
    )
    document = report.to_json()
    assert list(orjson.loads(document)) == ["patients", "totals"]
    assert document.index(b'"a"') < document.index(b'"b"')
    assert document.index(b'"x"') < document.index(b'"y"')


def test_to_json_keeps_non_ascii() -> None:
    merged = merge_counts([result(pairs={("Zoë", "spO₂"): 1}, rows=1, malformed=0)])
    assert orjson.loads(merged.to_json()) == {
        "patients": {"Zoë": {"spO₂": 1}},
        "totals": {"spO₂": 1},
    }


def test_empty_export() -> None:
    merged = merge_counts([])
    assert (merged.patients, merged.totals, merged.rows, merged.malformed) == ({}, {}, 0, 0)
    assert merged.to_json() == b'{\n  "patients": {},\n  "totals": {}\n}\n'
