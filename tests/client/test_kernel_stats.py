"""Tests for count_stats, the compiled kernel's statistics mode, against a plain reference.

Skipped where the kernel is not built (no C compiler at install time), like test_kernel.py.
"""

from __future__ import annotations

import calendar
import contextlib
import re
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export_client import _counting
from export_client._counting import count_block
from export_client._layout import CsvLayout
from export_client._pure import count_block_pure
from export_client._stats import Statistics

kernel = pytest.importorskip("export_client._kernel")

Stats = tuple[int, int, int, int, int | None, int, int]
Groups = dict[tuple[bytes, bytes], Stats]
Result = tuple[Groups, int, int, int, list[bytes]]
Ranges = dict[bytes, tuple[int, int]]

VALUE = re.compile(rb"[+-]?([0-9]+)(\.[0-9]+)?")
TIME = re.compile(
    rb"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?Z?"
)
INT64_MAX = 2**63 - 1


def parse_time(text: bytes) -> int | None:
    """Microseconds since the epoch, UTC; None unless the text is a valid time of that form."""
    m = TIME.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if year < 1 or not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hour > 23 or minute > 59 or second > 59:
        return None
    fraction = m.group(7) or b""
    micro = int(fraction.ljust(6, b"0")) if fraction else 0
    moment = datetime(year, month, day, hour, minute, second, micro)
    return (moment - datetime(1970, 1, 1)) // timedelta(microseconds=1)


def reference_stats(
    block: bytes,
    ncols: int,
    pidx: int,
    eidx: int,
    tidx: int,
    vidx: int,
    ranges: Ranges,
    max_examples: int,
) -> Result | None:
    """What count_stats must return, the plain way (the specification's own code)."""
    if b'"' in block:
        return None
    groups: dict[tuple[bytes, bytes], list[Any]] = {}
    rows, malformed, blank = 0, 0, 0
    examples: list[bytes] = []
    lines = block.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if b"\r" in line:
            return None
        if not line:
            blank += 1
            continue
        rows += 1
        fields = line.split(b",")
        ok = len(fields) == ncols and bool(fields[pidx]) and bool(fields[eidx])
        if ok:
            v = VALUE.fullmatch(fields[vidx])
            if v is not None and (v.group(2) is not None or len(v.group(1)) > 18):
                return None  # a decimal, or an integer too long for 64 bits: declined
            when = parse_time(fields[tidx])
            ok = v is not None and when is not None
        if not ok:
            malformed += 1
            if len(examples) < max_examples:
                examples.append(line)
            continue
        value = int(fields[vidx])
        key = (fields[pidx], fields[eidx])
        g = groups.get(key)
        if g is None:
            g = groups[key] = [
                0,
                0,
                value,
                value,
                0 if fields[eidx] in ranges else None,
                when,
                when,
            ]
        g[0] += 1
        g[1] += value
        if abs(g[1]) > INT64_MAX:
            return None  # the sum would overflow: declined (Python ints are exact)
        g[2] = min(g[2], value)
        g[3] = max(g[3], value)
        if g[4] is not None:
            lo, hi = ranges[fields[eidx]]
            if value < lo or value > hi:
                g[4] += 1
        g[5] = min(g[5], when)
        g[6] = max(g[6], when)
    return {k: tuple(g) for k, g in groups.items()}, rows, malformed, blank, examples


RANGES: Ranges = {b"heart_rate": (40, 180), b"spo2": (85, 100), b"bp_sys": (90, 200)}
RANGES[b"bp_dia"] = (60, 120)


def check(
    block: bytes,
    layout: tuple[int, int, int, int, int] = (4, 0, 2, 1, 3),
    ranges: Ranges | None = None,
    max_examples: int = 5,
) -> Result | None:
    """count_stats of the block, asserted equal to the reference (dict order included)."""
    ranges = RANGES if ranges is None else ranges
    got: Result | None = kernel.count_stats(block, *layout, ranges, max_examples)
    expected = reference_stats(block, *layout, ranges, max_examples)
    assert got == expected
    if got is not None and expected is not None:
        assert list(got[0]) == list(expected[0])  # keys in order of first appearance
        # The same lines as count_lines sees them: rows, blank lines and the pairs of the rows.
        counted = kernel.count_lines(block, layout[0], layout[1], layout[2], max_examples)
        assert counted is not None
        assert (got[1], got[3]) == (counted[1], counted[3])
        assert all(counted[0][key] >= stats[0] for key, stats in got[0].items())
    return got


def row(patient: bytes, when: bytes, event_type: bytes, value: bytes) -> bytes:
    return b",".join([patient, when, event_type, value]) + b"\n"


def rows_of(result: Result | None) -> Groups:
    assert result is not None
    return result[0]


def micros(text: str) -> int:
    return (datetime.fromisoformat(text) - datetime(1970, 1, 1)) // timedelta(microseconds=1)


T0 = b"2025-08-26T00:00:02.760570Z"


# Unit tests: valid rows


def test_valid_rows() -> None:
    block = (
        row(b"S1", T0, b"spo2", b"97")
        + row(b"S1", b"2025-08-26T00:00:01Z", b"spo2", b"80")
        + row(b"S2", b"2025-08-26T00:00:03.5", b"heart_rate", b"-7")
        + row(b"S1", b"2025-08-25T23:59:59.999999", b"spo2", b"+101")
        + row(b"S3", b"1970-01-01T00:00:00", b"other", b"0")
    )
    groups = rows_of(check(block))
    assert groups == {
        (b"S1", b"spo2"): (
            3,
            278,
            80,
            101,
            2,
            micros("2025-08-25T23:59:59.999999"),
            micros("2025-08-26T00:00:02.760570"),
        ),
        (b"S2", b"heart_rate"): (1, -7, -7, -7, 1, *[micros("2025-08-26T00:00:03.500000")] * 2),
        (b"S3", b"other"): (1, 0, 0, 0, None, 0, 0),
    }


def test_reference_export_rows() -> None:
    """Lines exactly as the project's server writes them, cut at arbitrary points."""
    from export_server import REFERENCE_CATALOG, generate_body

    downloads = REFERENCE_CATALOG.downloads("demo")
    assert downloads is not None
    body = b"".join(generate_body(downloads[0]))
    body = body[body.index(b"\n") + 1 :]
    result = check(body)
    assert result is not None
    assert result[1] == body.count(b"\n")
    assert result[2] == 0
    for cut in (1, 63, 64, 65, 4097, len(body) // 2):
        check(body[:cut])
        check(body[cut:])


@pytest.mark.parametrize(
    "text",
    [
        b"1970-01-01T00:00:00",
        b"1970-01-01T00:00:00Z",
        b"1969-12-31T23:59:59.999999Z",
        b"0001-01-01T00:00:00",
        b"9999-12-31T23:59:59.999999Z",
        b"2000-02-29T12:00:00",  # divisible by 400: a leap year
        b"2024-02-29T12:00:00",
        b"1600-02-29T00:00:00.1",
        b"2025-08-26T00:00:00.1",
        b"2025-08-26T00:00:00.12Z",
        b"2025-08-26T00:00:00.123",
        b"2025-08-26T00:00:00.1234Z",
        b"2025-08-26T00:00:00.12345",
        b"2025-08-26T00:00:00.000000",
        b"2025-12-31T23:59:59",
        b"2025-01-31T00:00:00",
        b"2025-04-30T00:00:00",
        b"2025-08-26T00:00:59.999999Z",  # in T0's minute
        b"2025-08-26T00:00:00.000000Z",
        b"2025-08-26T00:00:09.123456",
    ],
)
def test_valid_times(text: bytes) -> None:
    expected = parse_time(text)
    assert expected is not None
    block = row(b"P", text, b"e", b"1") + row(b"P", text, b"e", b"1")
    assert rows_of(check(block)) == {(b"P", b"e"): (2, 2, 1, 1, None, expected, expected)}
    # After a time of another minute, and of the same one (T0's).
    check(row(b"P", T0, b"e", b"1") + block + row(b"P", T0, b"e", b"1"))


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"2025-08-26",
        b"2025-08-26T00:00",
        b"2025-08-26T00:00:0",
        b"2025-08-26 00:00:00",
        b"2025-08-26t00:00:00",
        b"2025-08-26T00:00:00z",
        b"2025-08-26T00:00:00ZZ",
        b"2025-08-26T00:00:00Z.1",
        b"2025-08-26T00:00:00.",
        b"2025-08-26T00:00:00.Z",
        b"2025-08-26T00:00:00.1234567",
        b"2025-08-26T00:00:00.1234567Z",
        b"2025-08-26T00:00:00.12a",
        b"2025-08-26T00:00:00+00:00",
        b" 2025-08-26T00:00:00",
        b"2025-08-26T00:00:00 ",
        b"2025/08/26T00:00:00",
        b"2025-08-26T00-00-00",
        b"2025-8-26T00:00:00",
        b"25-08-26T00:00:00",
        b"12025-08-26T00:00:00",
        b"2025-08-26T0:00:00",
        b"0000-01-01T00:00:00",  # year 0
        b"2025-00-01T00:00:00",
        b"2025-13-01T00:00:00",
        b"2025-01-00T00:00:00",
        b"2025-01-32T00:00:00",
        b"2025-04-31T00:00:00",
        b"2025-02-29T00:00:00",  # not a leap year
        b"1900-02-29T00:00:00",  # divisible by 100 only
        b"2024-02-30T00:00:00",
        b"2025-08-26T24:00:00",
        b"2025-08-26T23:60:00",
        b"2025-08-26T23:59:60",  # no leap seconds
        b"2025-08-26T99:99:99",
        b"2O25-08-26T00:00:00",
        b"2025-08-26T00:00:0\x00",
        b"\xd9\xa2025-08-26T00:00:00",  # a non-ASCII digit
        b"2025-08-26T00:00:00.\xd9\xa1",
        b"2025-08-26T00:00:00.000000Z\x00",
        b"2025-08-26T00:00:00.000000ZZ",
        b"x" * 27,
        b"-" * 19,
        # 27 bytes, the exports' own form, in T0's minute (read a word at a time after it)
        b"2025-08-26T00:00:60.760570Z",
        b"2025-08-26T00:00:6x.760570Z",
        b"2025-08-26T00:00:/2.760570Z",
        b"2025-08-26T00:00:02.76057xZ",
        b"2025-08-26T00:00:02.76057:Z",
        b"2025-08-26T00:00:02.7605700",
        b"2025-08-26T00:00:02.760570z",
        b"2025-08-26T00:00:02,760570Z",
        b"2025-08-26T00:00:02Z760570Z",
        b"2025-08-26T00:00.02.760570Z",
        b"2025-08-26T00:00:02.\xb0\xb0\xb0\xb0\xb0\xb0Z",
        b"2025-08-26T00:00:\x80\x80.760570Z",
    ],
)
def test_malformed_times(text: bytes) -> None:
    assert parse_time(text) is None
    good = row(b"P", T0, b"e", b"1")
    line = row(b"P", text, b"e", b"1")
    result = check(good + line + good)
    assert result == (
        {(b"P", b"e"): (2, 2, 1, 1, None, *[parse_time(T0)] * 2)},
        3,
        1,
        0,
        [line[:-1]],
    )
    # After a valid time of the same date, and as a first time: the kept date is no shortcut.
    check(line + good + line)
    check(row(b"P", text[:10] + T0[10:], b"e", b"1") + line)


def test_dates_change_between_rows() -> None:
    days = [
        b"2025-02-28",
        b"2025-02-29",
        b"2025-03-01",
        b"2024-02-29",
        b"2025-02-28",
        b"0000-01-01",
    ]
    block = b"".join(row(b"P", day + b"T01:02:03Z", b"e", b"1") for day in days * 3)
    result = check(block)
    assert result is not None
    assert result[2] == 6


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"0", 0),
        (b"-0", 0),
        (b"+0", 0),
        (b"007", 7),
        (b"-12", -12),
        (b"+12", 12),
        (b"999999999999999999", 10**18 - 1),  # 18 digits: the longest taken
        (b"-999999999999999999", 1 - 10**18),
        (b"000000000000000001", 1),
    ],
)
def test_valid_values(text: bytes, value: int) -> None:
    block = row(b"P", T0, b"e", text)
    when = parse_time(T0)
    assert rows_of(check(block)) == {(b"P", b"e"): (1, value, value, value, None, when, when)}


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"+",
        b"-",
        b"--1",
        b"+-1",
        b"1-",
        b"1.",
        b".5",
        b"-.5",
        b"1.2.3",
        b"1.5x",
        b"1e3",
        b" 1",
        b"1 ",
        b"0x10",
        b"1_000",
        b"\xd9\xa1",  # a non-ASCII digit
        b"1\x00",
        b"12345678901234567890x",  # too long, but no integer either: malformed, not declined
        b"nan",
    ],
)
def test_malformed_values(text: bytes) -> None:
    assert VALUE.fullmatch(text) is None
    block = row(b"P", T0, b"e", b"1") + row(b"P", T0, b"e", text)
    result = check(block)
    assert result is not None
    assert result[2:] == (1, 0, [row(b"P", T0, b"e", text)[:-1]])


@pytest.mark.parametrize(
    "text", [b"1.5", b"0.0", b"-0.0", b"+3.14159", b"75.000000000000000000000000001"]
)
def test_decimals_are_declined(text: bytes) -> None:
    good = row(b"P", T0, b"e", b"1")
    assert check(good + row(b"P", T0, b"e", text) + good) is None
    assert check(good * 1000 + row(b"P", T0, b"e", text)) is None
    # Declined on a value alone, whatever the time.
    assert check(good + row(b"P", b"bad time", b"e", text)) is None
    # But a line that is malformed as count_lines sees it is only malformed.
    result = check(good + b"P," + T0 + b",e," + text + b",extra\n" + row(b"", T0, b"e", text))
    assert result is not None
    assert result[2] == 2


@pytest.mark.parametrize(
    "text", [b"1234567890123456789", b"0000000000000000001", b"-1000000000000000000", b"9" * 40]
)
def test_integers_of_over_18_digits_are_declined(text: bytes) -> None:
    assert check(row(b"P", T0, b"e", text)) is None
    assert check(row(b"P", T0, b"e", b"1") + row(b"P", T0, b"e", text)) is None


def test_sum_overflow_is_declined() -> None:
    big = b"999999999999999999"
    rest = INT64_MAX - 9 * (10**18 - 1)
    nine = row(b"P", T0, b"e", big) * 9
    exact = nine + row(b"P", T0, b"e", b"%d" % rest)
    assert rows_of(check(exact))[(b"P", b"e")][1] == INT64_MAX  # the largest sum kept
    assert check(exact + row(b"P", T0, b"e", b"1")) is None
    assert check(exact + row(b"P", T0, b"e", b"0")) is not None
    assert check(nine * 2) is None
    # Each pair has its own sum: two pairs of half the rows each are fine.
    assert check(nine + nine.replace(b"P,", b"Q,")) is not None
    negative = nine.replace(b"," + big, b",-" + big)
    exact_negative = negative + row(b"P", T0, b"e", b"-%d" % rest)
    assert rows_of(check(exact_negative))[(b"P", b"e")][1] == -INT64_MAX
    # -2**63 fits in 64 bits, but not in +-INT64_MAX: declined like the reference.
    assert check(exact_negative + row(b"P", T0, b"e", b"-1")) is None
    # Up and down again: the sum is checked row by row, not at the end.
    assert check(nine * 2 + negative * 2) is None
    alternating = (row(b"P", T0, b"e", big) + row(b"P", T0, b"e", b"-" + big)) * 50
    assert rows_of(check(alternating))[(b"P", b"e")][1] == 0


# Ranges


def test_ranges_bounds_and_anomalies() -> None:
    values = [39, 40, 41, 179, 180, 181, -1000]
    block = b"".join(row(b"P", T0, b"heart_rate", b"%d" % v) for v in values)
    block += row(b"P", T0, b"unranged", b"5000")
    groups = rows_of(check(block))
    assert groups[(b"P", b"heart_rate")][4] == 3  # a value on a bound is normal
    assert groups[(b"P", b"unranged")][4] is None


@pytest.mark.parametrize(
    "ranges",
    [
        {},
        {b"e": (0, 0)},
        {b"e": (5, 1)},  # lo above hi: every value is an anomaly
        {b"e": (-(2**200), 2**200)},  # beyond 64 bits
        {b"e": (2**64, 2**70)},
        {b"e": (-(2**70), -(2**64))},
        {b"e": (-(2**63), 2**63 - 1)},
        {b"e": (2**63 - 1, 2**63 - 1)},
        {b"e": (True, 3)},
        {b"f": (0, 10), b"": (0, 10), b"e\x00": (0, 10), b"E": (0, 10)},
        {b"e%d" % i: (i, i + 10) for i in range(1000)} | {b"e": (1, 2)},
    ],
)
def test_ranges(ranges: Ranges) -> None:
    values = [b"0", b"1", b"2", b"3", b"-999999999999999999", b"999999999999999999"]
    block = b"".join(row(b"P", T0, e, v) for v in values for e in (b"e", b"e7", b"f"))
    check(block, ranges=ranges)


def test_ranges_of_a_bytes_subclass_key() -> None:
    class Name(bytes):
        pass

    block = row(b"P", T0, b"e", b"5")
    assert rows_of(check(block, ranges={Name(b"e"): (0, 1)}))[(b"P", b"e")][4] == 1


def test_the_ranges_dict_may_change_after_the_call() -> None:
    ranges: Ranges = {b"e": (0, 1)}
    result = kernel.count_stats(row(b"P", T0, b"e", b"5"), 4, 0, 2, 1, 3, ranges, 0)
    ranges.clear()
    assert result[0][(b"P", b"e")][4] == 1


# Lines: CRLF, blank lines, the last line


def test_crlf() -> None:
    block = b"".join(row(b"S%d" % (i % 3), T0, b"spo2", b"%d" % (80 + i % 30)) for i in range(300))
    assert check(block.replace(b"\n", b"\r\n")) == check(block)


@pytest.mark.parametrize(
    "block",
    [
        b"\n",
        b"\r\n\r\n\n",
        b"P," + T0 + b",e,1\n\nP," + T0 + b",e,2\n\n",
        b"P," + T0 + b",e,1\r\n\r\nP," + T0 + b",e,2\r\n",
        b"\nP," + T0 + b",e,1",
        b"P," + T0 + b",e,1\n\r",
    ],
)
def test_blank_lines(block: bytes) -> None:
    result = check(block)
    assert result is not None
    assert result[3] >= 1


@pytest.mark.parametrize("ending", [b"", b"\r", b"\n", b"\r\n"])
@pytest.mark.parametrize(
    "layout",
    [(4, 0, 2, 1, 3), (4, 3, 1, 2, 0), (4, 0, 1, 3, 2), (5, 4, 0, 1, 2), (4, 1, 2, 0, 3)],
)
def test_every_field_last_on_the_last_line(
    ending: bytes, layout: tuple[int, int, int, int, int]
) -> None:
    """The time or the value ending the block, with or without a CR: no read past it."""
    ncols, pidx, eidx, tidx, vidx = layout
    for when in (T0, b"2025-08-26T00:00:02", b"2025-08-26T00:00:02.7"):
        fields = [b"x"] * ncols
        fields[pidx], fields[eidx], fields[tidx], fields[vidx] = b"P", b"e", when, b"42"
        line = b",".join(fields)
        for cut in range(len(line) + 1):
            check(line[:cut] + ending, layout)
            check(b"a\n" + line[:cut] + ending, layout)


def test_every_length_and_line_position() -> None:
    """Fields at every offset of the 64-byte words and of the zero-padded tail."""
    for length in range(1, 140):
        for ending in (b"\n", b"\r\n", b""):
            block = b"P,2025-08-26T00:00:00Z,e,1\n" + b"x" * length + b"," + T0 + b",e,7" + ending
            check(block)
            check(block[1:])
            check(block, (4, 2, 0, 1, 3))


@pytest.mark.parametrize("block", [b'"', row(b'"P"', T0, b"e", b"1"), row(b"P", T0, b"e", b'"1"')])
def test_quotes_declined(block: bytes) -> None:
    assert check(block) is None


@pytest.mark.parametrize(
    "block", [row(b"P", T0, b"e", b"1\r1"), row(b"P", T0 + b"\r", b"e", b"1"), b"\r\r"]
)
def test_lone_carriage_return_declined(block: bytes) -> None:
    assert check(block) is None


def test_empty_block() -> None:
    assert check(b"") == ({}, 0, 0, 0, [])


def test_malformed_as_count_lines_sees_it() -> None:
    for line in [
        b"P," + T0 + b",e",
        b"P," + T0 + b",e,1,",
        b"," + T0 + b",e,1",
        b"P," + T0 + b",,1",
    ]:
        result = check(line + b"\n" + row(b"P", T0, b"e", b"1"))
        assert result is not None
        assert result[2:] == (1, 0, [line])


# Examples


def test_examples_limit_and_order() -> None:
    bad = [row(b"P%d" % i, b"2025-02-30T00:00:00", b"e", b"1")[:-1] for i in range(4)]
    bad += [row(b"Q%d" % i, T0, b"e", b"one")[:-1] for i in range(4)]
    block = b"".join(line + b"\r\n" + row(b"P", T0, b"e", b"1") for line in bad)
    for limit in (0, 1, 5, 8, 100):
        result = check(block, max_examples=limit)
        assert result is not None
        assert result[2] == 8
        assert result[4] == bad[:limit]


def test_many_examples() -> None:
    block = row(b"P", b"t", b"e", b"1") * 10_000
    result = check(block, max_examples=sys.maxsize)
    assert result is not None
    assert len(result[4]) == 10_000


def test_many_distinct_keys() -> None:
    """The table grows many times over; each new pair looks its range up."""
    block = b"".join(
        row(b"P%d" % i, T0, b"e%d" % (i % 7), b"%d" % (i % 100)) for i in range(100_000)
    )
    ranges: Ranges = {b"e%d" % i: (10, 90) for i in range(0, 7, 2)}
    groups = rows_of(check(block + block[: len(block) // 2], ranges=ranges))
    assert len(groups) == 100_000


# Memoryviews and arguments


def test_memoryviews() -> None:
    block = b"".join(row(b"S%d" % (i % 3), T0, b"spo2", b"%d" % i) for i in range(100))
    for start, stop in [(0, len(block)), (5, 200), (0, 0), (30, len(block) - 3)]:
        view = memoryview(block)[start:stop]
        expected = kernel.count_stats(block[start:stop], 4, 0, 2, 1, 3, RANGES, 5)
        assert kernel.count_stats(view, 4, 0, 2, 1, 3, RANGES, 5) == expected


@pytest.mark.parametrize("function", ["count_lines", "count_stats"])
def test_a_released_memoryview_is_refused(function: str) -> None:
    """Its bytes may be gone with the release: the kernel must not look at them first."""
    args: tuple[object, ...] = (4, 0, 2, 5) if function == "count_lines" else (4, 0, 2, 1, 3, {}, 5)
    for _ in range(100):
        view = memoryview(b"".join([row(b"P", T0, b"e", b"1")] * 100))  # its only owner
        view.release()
        with pytest.raises(ValueError, match="released"):
            getattr(kernel, function)(view, *args)


def test_keyword_arguments() -> None:
    result = kernel.count_stats(
        block=b"2025-08-26T00:00:00,P,1,e\n",
        field_count=4,
        patient_index=1,
        event_type_index=3,
        time_index=0,
        value_index=2,
        ranges={b"e": (0, 0)},
        max_examples=0,
    )
    assert result == (
        {(b"P", b"e"): (1, 1, 1, 1, 1, *[micros("2025-08-26T00:00:00")] * 2)},
        1,
        0,
        0,
        [],
    )


def test_bytes_subclass_is_accepted() -> None:
    class Block(bytes):
        pass

    assert check(Block(row(b"P", T0, b"e", b"1"))) is not None


GOOD = b"P,2025-08-26T00:00:00,e,1\n"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((bytearray(GOOD), 4, 0, 2, 1, 3, {}, 5), TypeError),
        ((memoryview(bytearray(GOOD)), 4, 0, 2, 1, 3, {}, 5), TypeError),
        ((memoryview(GOOD)[::2], 4, 0, 2, 1, 3, {}, 5), BufferError),
        ((memoryview(GOOD * 2).cast("H"), 4, 0, 2, 1, 3, {}, 5), TypeError),
        ((GOOD.decode(), 4, 0, 2, 1, 3, {}, 5), TypeError),
        ((None, 4, 0, 2, 1, 3, {}, 5), TypeError),
        ((GOOD, 4.0, 0, 2, 1, 3, {}, 5), TypeError),
        ((GOOD, 4, 0, 2, "1", 3, {}, 5), TypeError),
        ((GOOD, 4, 0, 2, 1, 3.0, {}, 5), TypeError),
        ((GOOD, 4, 0, 2, 1, 3, {}), TypeError),
        ((GOOD, 4, 0, 2, 1, 3, {}, 5, 6), TypeError),
        ((GOOD, 4, 0, 2, 1, 3, None, 5), TypeError),
        ((GOOD, 4, 0, 2, 1, 3, [(b"e", (0, 1))], 5), TypeError),
        ((GOOD, 4, 0, 2, 1, 3, {"e": (0, 1)}, 5), TypeError),
        ((GOOD, 4, 0, 2, 1, 3, {b"e": [0, 1]}, 5), TypeError),
        ((GOOD, 4, 0, 2, 1, 3, {b"e": (0,)}, 5), TypeError),
        ((GOOD, 4, 0, 2, 1, 3, {b"e": (0, 1, 2)}, 5), TypeError),
        ((GOOD, 4, 0, 2, 1, 3, {b"e": (0, 1.0)}, 5), TypeError),
        ((GOOD, 4, 0, 2, 1, 3, {b"e": (None, 1)}, 5), TypeError),
        ((GOOD, 4, 0, 2, 1, 3, {b"f": (0, 1), b"e": 1}, 5), TypeError),
        ((GOOD, 1, 0, 0, 0, 0, {}, 5), ValueError),
        ((GOOD, 3, 0, 1, 2, 3, {}, 5), ValueError),
        ((GOOD, 4, 0, 2, 1, 4, {}, 5), ValueError),
        ((GOOD, 4, 4, 2, 1, 3, {}, 5), ValueError),
        ((GOOD, 4, -1, 2, 1, 3, {}, 5), ValueError),
        ((GOOD, 4, 0, 2, -1, 3, {}, 5), ValueError),
        ((GOOD, 4, 0, 2, 1, 1, {}, 5), ValueError),
        ((GOOD, 4, 0, 0, 1, 3, {}, 5), ValueError),
        ((GOOD, 4, 0, 2, 0, 3, {}, 5), ValueError),
        ((GOOD, 4, 3, 2, 1, 3, {}, 5), ValueError),
        ((GOOD, 4, 0, 2, 2, 3, {}, 5), ValueError),
        ((GOOD, 4, 0, 2, 1, 3, {}, -1), ValueError),
        ((GOOD, 2**70, 0, 2, 1, 3, {}, 5), OverflowError),
        ((GOOD, 4, 0, 2, 1, 2**70, {}, 5), OverflowError),
        ((GOOD, 4, 0, 2, 1, 3, {}, 2**70), OverflowError),
    ],
)
def test_argument_errors(args: tuple[object, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        kernel.count_stats(*args)


def test_a_dict_subclass_is_accepted() -> None:
    class Limits(dict[bytes, tuple[int, int]]):
        pass

    assert rows_of(check(GOOD, ranges=Limits({b"e": (2, 3)})))[(b"P", b"e")][4] == 1


# Memory: references, leaks, allocation failures


def test_no_reference_leaks() -> None:
    block = b"".join(row(b"S%d" % (i % 4), T0, b"spo2", b"%d" % i) for i in range(100)) + b"bad\n"
    lo, hi = 10**30, 10**31
    ranges = {b"spo2": (lo, hi)}
    before = [sys.getrefcount(x) for x in (block, lo, hi, ranges)]
    results = [kernel.count_stats(block, 4, 0, 2, 1, 3, ranges, 5) for _ in range(100)]
    assert [sys.getrefcount(x) for x in (block, lo, hi, ranges)] == before
    groups, *_, examples = results[-1]
    for key in groups:
        patient, event_type = key
        stats = groups[key]
        # Each held by its owner, the local variable and getrefcount's argument only.
        assert sys.getrefcount(key) == 3
        assert sys.getrefcount(patient) == 3
        assert sys.getrefcount(event_type) == 3
        assert sys.getrefcount(stats) == 3
    assert sys.getrefcount(examples[0]) == 3


def test_no_memory_leaks() -> None:
    """Raw allocations (the C tables, the ranges) are traced by tracemalloc: none may last."""
    many = b"".join(row(b"P%d" % i, T0, b"e", b"1") + b"bad\n" for i in range(20_000))
    blocks = [
        many,  # a grown table
        row(b"P", T0, b"e", b"1") + b'"\n',  # declined for a quote
        row(b"P", T0, b"e", b"1") * 50 + row(b"P", T0, b"e", b"1.5"),  # declined for a decimal
        row(b"P", T0, b"e", b"999999999999999999") * 20,  # declined for the sum
    ]
    ranges = {b"e%d" % i: (0, i) for i in range(100)} | {b"e": (0, 1)}
    tracemalloc.start()
    try:

        def run() -> None:
            for block in blocks:
                kernel.count_stats(block, 4, 0, 2, 1, 3, ranges, 5)
            with pytest.raises(ValueError, match="differ"):  # an argument error
                kernel.count_stats(b"", 4, 0, 2, 1, 1, ranges, 5)
            with pytest.raises(TypeError, match="ranges"):  # a bad ranges value, late
                kernel.count_stats(b"", 4, 0, 2, 1, 3, ranges | {b"z": 0}, 5)

        run()
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            run()
        assert tracemalloc.get_traced_memory()[0] - start < 10_000
    finally:
        tracemalloc.stop()


def test_allocation_failures_raise_memory_error() -> None:
    """Make the n-th allocation fail, for every n, until the call goes through."""
    testcapi = pytest.importorskip("_testcapi")
    block = b"".join(
        row(b"P%d" % i, T0, b"e%d" % (i % 3), b"%d" % i) + b"bad\n" for i in range(100)
    )
    ranges = {b"e0": (0, 50), b"e1": (-(2**70), 2**70), b"x": (0, 0)}
    expected = reference_stats(block, 4, 0, 2, 1, 3, ranges, 10)
    for start in range(10_000):
        testcapi.set_nomemory(start, 0)
        try:
            result = kernel.count_stats(block, 4, 0, 2, 1, 3, ranges, 10)
        except MemoryError:
            continue
        finally:
            testcapi.remove_mem_hooks()
        assert result == expected
        break
    else:
        pytest.fail("count_stats never succeeded")
    assert start > 10  # the ranges, the table, its growth, the keys, the tuples, the examples


# Threads


def stats_lines(rows: int, salt: int = 0) -> bytes:
    types = [b"heart_rate", b"spo2", b"bp_sys", b"steps"]
    return b"".join(
        row(
            b"S%d" % ((i + salt) % 6),
            b"2025-08-%02dT%02d:%02d:%02d.%06dZ"
            % (1 + i // 7200 % 28, i // 3600 % 24, i // 60 % 60, i % 60, i),
            types[i % 4],
            b"%d" % (i * 37 % 211 - salt),
        )
        for i in range(rows)
    )


def test_threads_count_alike() -> None:
    blocks = [stats_lines(2000 + i, i) + b"bad%d\n" % i for i in range(16)]
    expected = [reference_stats(block, 4, 0, 2, 1, 3, RANGES, 5) for block in blocks]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            got = list(
                pool.map(lambda b: kernel.count_stats(b, 4, 0, 2, 1, 3, RANGES, 5), blocks * 2)
            )
            assert got == expected * 2


def test_the_gil_is_released() -> None:
    """Python code runs in another thread while the kernel counts (see test_kernel.py)."""
    block = stats_lines(20_000) * 40  # about 40 MB: tens of milliseconds

    def count(span: list[float], done: threading.Event) -> None:
        span.append(time.perf_counter())
        kernel.count_stats(block, 4, 0, 2, 1, 3, RANGES, 5)
        span.append(time.perf_counter())
        done.set()

    for _ in range(5):
        span: list[float] = []
        done = threading.Event()
        stamps: list[float] = []
        thread = threading.Thread(target=count, args=(span, done))
        thread.start()
        while not done.is_set():
            stamps.append(time.perf_counter())
        thread.join()
        start, end = span
        middle = (start + 0.4 * (end - start), start + 0.6 * (end - start))
        if any(middle[0] < stamp < middle[1] for stamp in stamps):
            return
    pytest.fail("the main thread never ran while the kernel counted")


def test_a_memoryview_cannot_be_released_while_it_is_counted() -> None:
    block = memoryview(stats_lines(1000) * 200)
    with ThreadPoolExecutor(1) as pool:
        counting = pool.submit(kernel.count_stats, block, 4, 0, 2, 1, 3, RANGES, 5)
        # While the kernel holds it, the view refuses to be released (BufferError).
        with contextlib.suppress(BufferError):
            block.release()
        assert counting.result()[1] == 200_000


# Hypothesis: arbitrary bytes, and line-shaped blocks with valid and broken times and values

ALPHABET = b',\n\r"aT:-.Z+0123456789\x00'
LAYOUTS = st.integers(min_value=4, max_value=6).flatmap(
    lambda ncols: st.tuples(
        st.just(ncols),
        st.lists(st.integers(0, ncols - 1), min_size=4, max_size=4, unique=True),
    )
)
EVENT_TYPES = [b"heart_rate", b"spo2", b"e", b"x"]
RANGE_DICTS = st.dictionaries(
    st.sampled_from([*EVENT_TYPES, b"", b"other"]),
    st.tuples(
        st.integers(-200, 200) | st.integers(-(2**70), 2**70),
        st.integers(-200, 200) | st.integers(-(2**70), 2**70),
    ),
    max_size=4,
)


FIRST_DAY = datetime(1, 1, 1)
LAST_MICROSECOND = (datetime(9999, 12, 31, 23, 59, 59, 999999) - FIRST_DAY) // timedelta(
    microseconds=1
)
EXPORT_DAY = (datetime(2025, 8, 26) - FIRST_DAY) // timedelta(microseconds=1)
DAY = 86_400_000_000
# Ways to break a valid time (or to leave it valid: a leap day where there is one).
BREAKS = [
    lambda t: t[:4] + b"-02-29" + t[10:],
    lambda t: t[:4] + b"-02-30" + t[10:],
    lambda t: t[:4] + b"-04-31" + t[10:],
    lambda t: t[:4] + b"-13" + t[7:],
    lambda t: t[:4] + b"-00" + t[7:],
    lambda t: t[:8] + b"00" + t[10:],
    lambda t: b"0000" + t[4:],
    lambda t: t[:11] + b"24" + t[13:],
    lambda t: t[:14] + b"60" + t[16:],
    lambda t: t[:17] + b"60" + t[19:],
    lambda t: t[:19] + b".",
    lambda t: t[:19] + b".1234567",
    lambda t: t[:19] + b".123456ZZ",
    lambda t: t[:19] + b"z",
    lambda t: t.replace(b"T", b" "),
    lambda t: t + b" ",
    lambda t: t[1:],
]


@st.composite
def times(draw: st.DrawFn, base: int = EXPORT_DAY) -> bytes:
    """Valid times mostly: within a minute or two of base (the kept minute), on a few days, or
    any; sometimes broken."""
    near = draw(st.integers(0, 3))
    if near < 2:
        offset = min(base + draw(st.integers(0, 120_000_000)), LAST_MICROSECOND)
    elif near == 2:
        offset = EXPORT_DAY + draw(st.integers(-DAY, 2 * DAY))
    else:
        offset = draw(st.integers(0, LAST_MICROSECOND))
    m = FIRST_DAY + timedelta(microseconds=offset)
    text = b"%04d-%02d-%02dT%02d:%02d:%02d" % (m.year, m.month, m.day, m.hour, m.minute, m.second)
    digits = draw(st.integers(0, 6))
    if digits:
        text += b".%06d" % m.microsecond
        text = text[: 20 + digits]
    if draw(st.booleans()):
        text += b"Z"
    mutation = draw(st.integers(0, 15))
    if mutation == 0:  # a byte replaced
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] + draw(st.sampled_from(b"x-:T9 .Z\x00")).to_bytes(1, "big") + text[i + 1 :]
    elif mutation == 1:  # cut short
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif mutation == 2:
        text = draw(st.sampled_from(BREAKS))(text)
    elif mutation == 3:
        text = draw(st.binary(max_size=30))
    return text


VALUES = (
    st.integers(-300, 300).map(b"%d".__mod__)
    | st.integers(-(10**19), 10**19).map(b"%d".__mod__)
    | st.sampled_from(
        [
            b"999999999999999999",
            b"-999999999999999999",
            b"+5",
            b"-0",
            b"007",
            b"1.5",
            b"1.",
            b"",
            b"+",
            b"x",
            b"1e3",
            b"0000000000000000001",
            b"12a",
        ]
    )
)


@st.composite
def line_blocks(draw: st.DrawFn) -> tuple[bytes, tuple[int, int, int, int, int]]:
    """Lines of the layout's fields, mostly valid rows of a few pairs, sometimes broken ones."""
    ncols, (pidx, eidx, tidx, vidx) = draw(LAYOUTS)
    base = draw(st.integers(0, LAST_MICROSECOND) | st.just(EXPORT_DAY))
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 15))
        if kind == 0:
            lines.append(b"")  # blank
            continue
        fields = [b"a"] * ncols
        fields[pidx] = draw(st.sampled_from([b"S1", b"S2", b"" if kind == 1 else b"S3"]))
        fields[eidx] = draw(st.sampled_from([*EVENT_TYPES, b"" if kind == 2 else b"bp_sys"]))
        fields[tidx] = draw(times(base))
        fields[vidx] = draw(VALUES) if kind < 8 else b"%d" % draw(st.integers(-300, 300))
        if kind == 3:  # a field too many or too few
            fields = [*fields, b"x"] if draw(st.booleans()) else fields[:-1]
        lines.append(b",".join(fields))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    block = ending.join(lines) + draw(st.sampled_from([b"", b"\r", ending]))
    return block, (ncols, pidx, eidx, tidx, vidx)


@st.composite
def alphabet_blocks(draw: st.DrawFn) -> bytes:
    """Bytes mostly from the interesting alphabet, sometimes anything."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=300))
    weights = draw(st.lists(st.integers(0, 3), min_size=len(ALPHABET), max_size=len(ALPHABET)))
    letters = [bytes([c]) for c, w in zip(ALPHABET, weights, strict=True) for _ in range(w)]
    letters = letters or [b"a"]
    return b"".join(draw(st.lists(st.sampled_from(letters), max_size=300)))


@settings(max_examples=1500, deadline=None)
@given(line_blocks(), RANGE_DICTS, st.integers(0, 4))
def test_matches_the_reference_on_lines(
    drawn: tuple[bytes, tuple[int, int, int, int, int]], ranges: Ranges, limit: int
) -> None:
    block, layout = drawn
    check(block, layout, ranges, limit)
    check(block.replace(b"\r", b""), layout, ranges, limit)


@settings(max_examples=1000, deadline=None)
@given(alphabet_blocks(), LAYOUTS, RANGE_DICTS, st.integers(0, 4))
def test_matches_the_reference_on_any_bytes(
    block: bytes, layout: tuple[int, list[int]], ranges: Ranges, limit: int
) -> None:
    ncols, (pidx, eidx, tidx, vidx) = layout
    check(block, (ncols, pidx, eidx, tidx, vidx), ranges, limit)


@settings(max_examples=300, deadline=None)
@given(line_blocks(), st.integers(0, 300), st.integers(0, 300))
def test_a_memoryview_of_bytes_counts_as_its_slice(
    drawn: tuple[bytes, tuple[int, int, int, int, int]], start: int, stop: int
) -> None:
    block, layout = drawn
    view = memoryview(block)[start:stop]
    expected = kernel.count_stats(block[start:stop], *layout, RANGES, 5)
    assert kernel.count_stats(view, *layout, RANGES, 5) == expected


# The kernel inside the counting core: statistics as the pure core counts them


@pytest.mark.skipif(_counting._kernel is None, reason="the kernel is switched off")
@settings(max_examples=500, deadline=None)
@given(drawn=line_blocks(), decimal=st.booleans())
def test_count_block_with_stats_equals_the_pure_core(
    drawn: tuple[bytes, tuple[int, int, int, int, int]], decimal: bool
) -> None:
    block, (ncols, pidx, eidx, tidx, vidx) = drawn
    layout = CsvLayout(ncols, pidx, eidx, tidx, vidx)
    # A decimal bound is what the kernel's integer bounds must stand for exactly.
    bounds = (Fraction(81, 2), Fraction(361, 2)) if decimal else (40, 180)
    stats = Statistics.of({"heart_rate": bounds, "S2": (0, 1)})
    assert count_block(block, layout, stats) == count_block_pure(block, layout, stats)
