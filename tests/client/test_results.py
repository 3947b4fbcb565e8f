"""Tests for merging download counts into the export's result."""

from __future__ import annotations

import orjson

from export_client._results import DownloadCount, ExportCount, merge_counts


def test_merge_sums_and_sorts() -> None:
    first = DownloadCount(
        pairs={("P2", "spo2"): 3, ("P1", "spo2"): 1, ("P1", "heart_rate"): 2},
        rows=7,
        malformed=1,
        malformed_examples=("bad",),
    )
    second = DownloadCount(pairs={("P1", "spo2"): 4, ("P10", "bp_sys"): 5}, rows=9, malformed=0)
    result = merge_counts([first, second])
    assert result == ExportCount(
        patients={
            "P1": {"heart_rate": 2, "spo2": 5},
            "P10": {"bp_sys": 5},
            "P2": {"spo2": 3},
        },
        totals={"bp_sys": 5, "heart_rate": 2, "spo2": 8},
        rows=16,
        malformed=1,
    )
    assert list(result.patients) == ["P1", "P10", "P2"]
    assert list(result.patients["P1"]) == ["heart_rate", "spo2"]
    assert list(result.totals) == ["bp_sys", "heart_rate", "spo2"]


def test_merge_accepts_a_generator() -> None:
    counts = (DownloadCount(pairs={("P", "a"): 1}, rows=1, malformed=0) for _ in range(3))
    assert merge_counts(counts).totals == {"a": 3}


def test_to_json_exact_bytes() -> None:
    result = merge_counts(
        [
            DownloadCount(
                pairs={("P002", "bp_sys"): 2, ("P001", "bp_dia"): 1}, rows=4, malformed=1
            ),
            DownloadCount(pairs={("P001", "bp_sys"): 3}, rows=3, malformed=0),
        ]
    )
    assert result.to_json() == (
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
    result = ExportCount(
        patients={"b": {"y": 1, "x": 2}, "a": {"z": 3}},
        totals={"z": 3, "y": 1, "x": 2},
        rows=6,
        malformed=0,
    )
    document = result.to_json()
    assert list(orjson.loads(document)) == ["patients", "totals"]
    assert document.index(b'"a"') < document.index(b'"b"')
    assert document.index(b'"x"') < document.index(b'"y"')


def test_to_json_keeps_non_ascii() -> None:
    result = merge_counts([DownloadCount(pairs={("Zoë", "spO₂"): 1}, rows=1, malformed=0)])
    assert orjson.loads(result.to_json()) == {
        "patients": {"Zoë": {"spO₂": 1}},
        "totals": {"spO₂": 1},
    }


def test_empty_export() -> None:
    result = merge_counts([])
    assert result == ExportCount(patients={}, totals={}, rows=0, malformed=0)
    assert result.to_json() == b'{\n  "patients": {},\n  "totals": {}\n}\n'
