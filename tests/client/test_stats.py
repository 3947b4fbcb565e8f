"""Statistics mode: parsing, the accumulators, both cores against a plain row-by-row reference."""

from __future__ import annotations

import ast
import itertools
import json
import tracemalloc
from collections.abc import Iterable
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import export_client
from export_client import MalformedDownloadError, count_export
from export_client._body import count_body
from export_client._cli import app
from export_client._stats import (
    DEFAULT_NORMAL_RANGES,
    GroupStats,
    Number,
    Statistics,
    parse_range,
    parse_time,
    parse_value,
)
from export_server import REFERENCE_CATALOG, running_server

from . import stats_reference
from .memory import MemorySource
from .stats_reference import ISSUE_RANGES, reference

pytestmark = pytest.mark.usefixtures("counting_core")

HEADER = b"patient_id,event_time,event_type,value\n"
STATS = Statistics.of()


def test_the_reference_imports_nothing_of_the_code_under_test() -> None:
    tree = ast.parse(Path(stats_reference.__file__).read_text())
    imported = [
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
        )
    ]
    assert imported
    assert not [name for name in imported if name.split(".")[0] in ("export_client", "")]


def test_the_default_ranges_are_the_issue_s() -> None:
    assert dict(DEFAULT_NORMAL_RANGES) == ISSUE_RANGES


def counted(chunks: Iterable[bytes], stats: Statistics = STATS) -> dict[str, object]:
    """The statistics document of a body counted with the core under test."""
    from export_client._metadata import DownloadInfo
    from export_client._results import DownloadResult, ExportReport

    body = count_body(chunks, stats=stats)
    info = DownloadInfo("d", body.counts.rows, (), (), "", "")
    result = DownloadResult.of(info, body.counts, nbytes=0, attempts=1)
    document = ExportReport.of("e", [result], seconds=0).document()
    return {
        key: {
            name: _floats(value)
            for name, value in part.items()  # type: ignore[attr-defined]
        }
        for key, part in document.items()
    }


def _floats(value: object) -> object:
    # Both sides compare as JSON would read them: min and max as JSON numbers.
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    return float(value) if isinstance(value, Fraction) else value


def _json_number(value: object) -> object:
    if isinstance(value, Fraction) or (isinstance(value, int) and not -(2**63) <= value < 2**63):
        return float(value)
    return value


def normalized(document: dict[str, object]) -> dict[str, object]:
    def fix(figures: dict[str, object]) -> dict[str, object]:
        # The JSON's numbers: integers as integers while they fit in 64 bits, else floats.
        return {k: _json_number(v) for k, v in figures.items()}

    patients = document["patients"]
    totals = document["totals"]
    assert isinstance(patients, dict)
    assert isinstance(totals, dict)
    return {
        "patients": {p: {t: fix(f) for t, f in types.items()} for p, types in patients.items()},
        "totals": {t: fix(f) for t, f in totals.items()},
    }


# Parsing


@pytest.mark.parametrize(
    ("text", "value"),
    [(b"97", 97), (b"-12", -12), (b"+5", 5), (b"007", 7), (b"97.5", Fraction(195, 2))],
)
def test_values_that_parse(text: bytes, value: Number) -> None:
    assert parse_value(text) == value


@pytest.mark.parametrize(
    "text", [b"", b" 5", b"5 ", b"5_000", b"1e3", b".5", b"5.", b"nan", b"0x10", b"1" * 301]
)
def test_values_that_do_not_parse(text: bytes) -> None:
    assert parse_value(text) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (b"1970-01-01T00:00:00", 0),
        (b"1970-01-01T00:00:01Z", 1),
        (b"1970-01-01T00:00:01.5Z", 1.5),
        (b"1970-01-01T00:00:01.000001", 1.000001),
        (b"2024-02-29T12:00:00Z", 1709208000),
        (b"0001-01-01T00:00:00", -62135596800),
    ],
)
def test_times_that_parse(text: bytes, seconds: float) -> None:
    assert parse_time(text) == round(seconds * 10**6)


@pytest.mark.parametrize(
    "text",
    [
        b"2025-02-29T00:00:00",  # not a leap year
        b"2025-13-01T00:00:00",
        b"2025-04-31T00:00:00",
        b"2025-01-01T24:00:00",
        b"2025-01-01T00:60:00",
        b"2025-01-01T00:00:60",
        b"0000-01-01T00:00:00",
        b"2025-01-01T00:00:00.1234567",
        b"2025-01-01 00:00:00",
        b"2025-01-01T00:00:00+01:00",
        b"2025-01-01",
        b"2025-01-01T00:00:00z",
    ],
)
def test_times_that_do_not_parse(text: bytes) -> None:
    assert parse_time(text) is None


def test_text_order_is_not_time_order_but_ours_is() -> None:
    whole, half = b"2025-08-26T00:00:01Z", b"2025-08-26T00:00:01.5Z"
    assert whole > half  # as text
    body = HEADER + b"P1," + half + b",a,1\nP1," + whole + b",a,2\n"
    group = counted([body])["patients"]["P1"]["a"]  # type: ignore[index]
    assert group["latency"] == 0.5


def test_ranges_from_the_command_line() -> None:
    assert parse_range("temperature=36.1:37.5") == (
        "temperature",
        (Fraction(361, 10), Fraction(75, 2)),
    )
    for bad in ("hr", "hr=1", "hr=a:b", "=1:2", "hr=5:1"):
        with pytest.raises(ValueError, match=r"hr|TYPE"):
            parse_range(bad)


def test_defaults_and_overrides() -> None:
    stats = Statistics.of({"spo2": (90, 100), "temperature": (36, 38)})
    assert stats.ranges[b"heart_rate"] == DEFAULT_NORMAL_RANGES["heart_rate"]
    assert stats.ranges[b"spo2"] == (90, 100)
    assert stats.ranges[b"temperature"] == (36, 38)
    assert Statistics.of({"x": (Fraction(1, 2), Fraction(5, 2))}).kernel_bounds[b"x"] == (1, 2)


# The accumulators


def test_a_group_s_figures() -> None:
    group = GroupStats(3, 10, 1, 6, 1, 0, 4_000_000)
    assert group.to_dict() == {
        "count": 3,
        "mean": 3.333,
        "min": 1,
        "max": 6,
        "anomalies": 1,
        "latency": 2.0,
    }
    group.merge(GroupStats(1, Fraction(1, 2), Fraction(1, 2), Fraction(1, 2), 0, -1_000_000, 0))
    assert group.to_dict()["min"] == 0.5
    assert group.latency == Fraction(5, 3)


def test_one_event_has_no_latency_and_unknown_types_no_anomalies() -> None:
    assert GroupStats(1, 5, 5, 5, None, 7, 7).to_dict()["latency"] is None
    assert GroupStats(1, 5, 5, 5, None, 7, 7).to_dict()["anomalies"] is None


# The counting cores against the reference


def generated(rows: int) -> bytes:
    types = ["heart_rate", "spo2", "bp_sys", "bp_dia", "temperature"]
    lines = []
    for i in range(rows):
        fraction = "" if i % 7 == 0 else f".{i % 1000:03d}" if i % 3 else f".{i:06d}"[:7]
        zone = "Z" if i % 5 else ""
        value = str(20 + i * 37 % 220) if i % 11 else f"{36 + i % 3}.{i % 10}"
        lines.append(
            f"S{i % 4},2025-08-26T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}"
            f"{fraction}{zone},{types[i % 5]},{value}\n"
        )
    return HEADER + "".join(lines).encode()


@pytest.mark.parametrize("chunk", [64, 1000, 1 << 20])
def test_a_clean_body_matches_the_reference(chunk: int) -> None:
    body = generated(5000)
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    assert normalized(counted(chunks)) == normalized(reference(body, ISSUE_RANGES))


def test_rows_whose_time_or_value_does_not_parse_are_malformed() -> None:
    body = (
        HEADER
        + b"P1,2025-08-26T00:00:00Z,heart_rate,70\n"
        + b"P1,2025-02-30T00:00:00Z,heart_rate,70\n"
        + b"P1,2025-08-26T00:00:01Z,heart_rate,seventy\n"
        + b"P1,2025-08-26T00:00:02Z,heart_rate,200\n"
    )
    result = count_body([body], stats=STATS)
    assert (result.counts.rows, result.counts.malformed) == (4, 2)
    assert result.counts.groups is not None
    group = result.counts.groups[(b"P1", b"heart_rate")]
    assert (group.count, group.anomalies, group.minimum, group.maximum) == (2, 1, 70, 200)


@pytest.mark.parametrize(
    "value",
    [b"1" * 200 + b"." + b"1" * 200, b"-" + b"9" * 150 + b"." + b"9" * 151, b"1" * 301],
)
def test_a_value_of_over_300_digits_is_malformed(value: bytes) -> None:
    rows = [b"P1,2025-08-26T00:00:%02dZ,heart_rate,7%d\n" % (i, i) for i in range(50)]
    rows[20] = b"P1,2025-08-26T00:00:20Z,heart_rate," + value + b"\n"
    result = count_body([HEADER + b"".join(rows)], stats=STATS)
    assert (result.counts.rows, result.counts.malformed) == (50, 1)
    assert result.counts.groups is not None
    assert result.counts.groups[(b"P1", b"heart_rate")].count == 49


def test_a_header_without_time_or_value_is_a_format_error() -> None:
    from export_client._exceptions import CsvFormatError

    with pytest.raises(CsvFormatError, match="'value'"):
        count_body([b"patient_id,event_time,event_type\nP1,t,a\n"], stats=STATS)


LINE_PARTS = st.sampled_from(
    [
        b"2025-08-26T00:00:01Z",
        b"2025-08-26T00:00:01.5Z",
        b"2025-08-26T00:00:01.25",
        b"2025-12-31T23:59:59.999999Z",
        b"2024-02-29T00:00:00",
        b"2025-02-29T00:00:00",
        b"2025-08-26T25:00:00",
        b"garbage",
        b"",
    ]
)
VALUES = st.sampled_from(
    [
        b"70",
        b"-3",
        b"+5",
        b"200",
        b"97.5",
        b"0.25",
        b"1e3",
        b"",
        b"x",
        b"9" * 25,
        b"9" * 300,
        b"9" * 299 + b".5",
        b"9" * 200 + b"." + b"9" * 101,
    ]
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    lines = [HEADER]
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["row"] * 8 + ["blank", "short", "quoted"]))
        patient = draw(st.sampled_from([b"P1", b"P2", b""]))
        event_type = draw(st.sampled_from([b"heart_rate", b"spo2", b"other"]))
        fields = [patient, draw(LINE_PARTS), event_type, draw(VALUES)]
        if kind == "blank":
            lines.append(b"\n")
        elif kind == "short":
            lines.append(b",".join(fields[:3]) + b"\n")
        elif kind == "quoted":
            lines.append(b",".join(b'"' + f + b'"' for f in fields) + b"\n")
        else:
            lines.append(b",".join(fields) + draw(st.sampled_from([b"\n", b"\r\n"])))
    return b"".join(lines)


@settings(max_examples=300, deadline=None)
@given(body=bodies(), points=st.lists(st.integers(0, 2000), max_size=6))
def test_any_body_split_anywhere_matches_the_reference(body: bytes, points: list[int]) -> None:
    bounds = [0, *sorted(p for p in points if p <= len(body)), len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(bounds)]
    expected = reference(body, ISSUE_RANGES)
    assert normalized(counted(chunks)) == normalized(expected)


def test_clean_blocks_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from export_client import _pure

    def fail(*args: object) -> None:
        raise AssertionError("the exact path was used")

    monkeypatch.setattr(_pure, "_count_exact", fail)
    body = generated(20_000)  # times of mixed forms, some decimal values
    assert normalized(counted([body])) == normalized(reference(body, ISSUE_RANGES))


# End to end: the real CLI against the real server, and the reference over the same bytes


@pytest.mark.parametrize("export_id", ["demo", "small"])
def test_cli_stats_agree_with_the_reference(
    export_id: str, tmp_path: Path, counting_core: str
) -> None:
    if export_id == "small" and counting_core != "compiled":
        pytest.skip("small once is enough; the pure core's run is the demo one")
    cache = tmp_path / "cache"
    with running_server(workers=2, cache_dir=cache) as url:
        result = CliRunner().invoke(app, [export_id, "-s", url, "--stats", "-q"])
    assert result.exit_code == 0, result.stderr
    # The server cached each body it sent: the reference reads the very same bytes.
    downloads = REFERENCE_CATALOG.downloads(export_id) or []
    bodies = [(cache / f"{download.id}.csv").read_bytes() for download in downloads]
    merged = HEADER + b"".join(body.split(b"\n", 1)[1] for body in bodies)
    assert json.loads(result.stdout) == reference(merged, ISSUE_RANGES)


@pytest.mark.parametrize(
    "bad",
    [
        b"2025-08-26T24:00:00.000001Z",
        b"2025-08-26T29:59:59.999999Z",
        b"2025-08-26T30:00:00.000001Z",
        b"2025-08-26T12:60:00.000001Z",
        b"2025-08-26T12:00:60.000001Z",
        b"2025-02-29T12:00:00.000001Z",
        b"2025-13-01T12:00:00.000001Z",
        b"2025-00-01T12:00:00.000001Z",
        b"2025-08-00T12:00:00.000001Z",
        b"0000-08-26T12:00:00.000001Z",
    ],
)
def test_a_time_written_like_the_others_that_is_no_time_is_malformed(bad: bytes) -> None:
    good = [b"2025-08-26T%02d:%02d:00.000001Z" % (i // 60, i % 60) for i in range(600)]
    rows = [b"P1," + moment + b",heart_rate,70\n" for moment in good]
    rows[300] = b"P1," + bad + b",heart_rate,70\n"
    result = count_body([HEADER + b"".join(rows)], stats=STATS)
    assert (result.counts.rows, result.counts.malformed) == (600, 1)
    assert result.counts.groups is not None
    assert result.counts.groups[(b"P1", b"heart_rate")].count == 599


# Bounded memory, and the library


def _days_of_rows(rows: bytes, days: int) -> Iterable[bytes]:
    """`days` copies of `rows`, each on a day of its own, made as they are read."""
    yield HEADER
    for day in range(days):
        date = (datetime(2025, 1, 1) + timedelta(days=day)).strftime("%Y-%m-%d").encode()
        yield rows.replace(b"2025-08-26", date)


def test_memory_does_not_grow_with_the_rows() -> None:
    # Times of every form, some decimal values, a type with no range.
    rows = generated(10_000)[len(HEADER) :]
    peaks = []
    for days in (2, 16):
        tracemalloc.start()
        try:
            result = count_body(_days_of_rows(rows, days), stats=STATS)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert result.counts.rows == days * 10_000
        assert result.counts.groups is not None
        assert len(result.counts.groups) == 4 * 5
    # Eight times the rows, the same peak: what is held is each chunk while it is counted and a
    # fixed set of accumulators per group.
    assert peaks[1] < peaks[0] * 1.1 + 100_000, peaks


def test_the_library_keeps_the_figures_exact() -> None:
    body = HEADER + (
        b"P001,2025-08-26T00:00:00Z,bp_sys,100\n"
        b"P001,2025-08-26T00:00:03.5,bp_sys,101\n"
        b"P002,2025-08-26T00:00:01.25Z,bp_sys,150\n"
        b"P002,2025-08-26T00:00:02Z,temperature,36.6\n"
        b"P002,2025-08-26T00:00:04Z,temperature,37\n"
    )
    ranges = {"bp_sys": (100, 140)}
    source = MemorySource({"d1": body})
    report = count_export("demo", source=source, stats=True, normal_ranges=ranges)
    assert report.stats is not None
    assert report.type_stats is not None
    first = report.stats["P001"]["bp_sys"]
    assert isinstance(first, export_client.GroupStats)  # a public name
    assert (first.count, first.minimum, first.maximum, first.anomalies) == (2, 100, 101, 0)
    assert (first.mean, first.latency) == (Fraction(201, 2), Fraction(7, 2))
    temperature = report.stats["P002"]["temperature"]
    assert (temperature.mean, temperature.anomalies) == (Fraction(184, 5), None)
    assert temperature.latency == 2
    total = report.type_stats["bp_sys"]
    assert (total.count, total.mean, total.anomalies) == (3, Fraction(117), 1)
    assert total.latency == Fraction(7, 4)
    assert json.loads(report.to_json())["totals"]["temperature"] == {
        "count": 2,
        "mean": 36.8,
        "min": 36.6,
        "max": 37,
        "anomalies": None,
        "latency": 2.0,
    }


def test_strict_fails_on_a_row_whose_time_does_not_parse() -> None:
    body = HEADER + b"P001,2025-08-26T00:00:00Z,bp_sys,100\nP001,2025-08-26 00:00:01,bp_sys,90\n"
    report = count_export("demo", source=MemorySource({"d1": body}), stats=True)
    assert (report.rows, report.malformed) == (2, 1)
    with pytest.raises(MalformedDownloadError, match="1 malformed rows"):
        count_export("demo", source=MemorySource({"d1": body}), stats=True, strict=True)


def test_csv_and_table_show_what_a_single_event_of_a_type_without_a_range_lacks() -> None:
    from export_client._formats import render

    body = HEADER + b"P001,2025-08-26T00:00:00Z,temperature,36.6\n"
    report = count_export("demo", source=MemorySource({"d1": body}), stats=True)
    assert render(report, "csv").decode().splitlines() == [
        "patient_id,event_type,count,mean,min,max,anomalies,latency",
        "P001,temperature,1,36.6,36.6,36.6,,",
    ]
    lines = [line.split() for line in render(report, "table").decode().splitlines()]
    assert ["P001", "temperature", "1", "36.600", "36.600", "36.600", "-", "-"] in lines
    assert ["total", "temperature", "1", "36.600", "36.600", "36.600", "-", "-"] in lines
