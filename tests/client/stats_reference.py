"""A plain row-by-row reference of statistics mode, written from the issue's definitions.

It imports nothing from export_client (a test checks that), so it cannot share a mistake with
the code under test: its own value and time parsing (`int`, `Decimal`, `datetime.fromisoformat`),
its own ranges, every row's value and time kept, the times sorted and the gaps between
consecutive ones summed (rather than the telescoped sum the client uses).
"""

from __future__ import annotations

import csv
import gc
import itertools
import re
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

Number = int | Fraction

# The issue's normal ranges: outside them (strictly) a value is an anomaly.
ISSUE_RANGES: dict[str, tuple[Number, Number]] = {
    "heart_rate": (40, 180),
    "spo2": (85, 100),
    "bp_sys": (90, 200),
    "bp_dia": (60, 120),
}

INTEGER = re.compile(r"[+-]?[0-9]+")
DECIMAL = re.compile(r"[+-]?[0-9]+\.[0-9]+")
TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z?")


def reference_value(text: str) -> Number | None:
    if text.isdecimal() and text.isascii() and len(text) <= 300:  # the usual case, quickly
        return int(text)
    if INTEGER.fullmatch(text) and len(text.lstrip("+-")) <= 300:
        return int(text)
    if DECIMAL.fullmatch(text) and len(text.lstrip("+-")) <= 301:
        return Fraction(Decimal(text))
    return None


EPOCH = datetime(1970, 1, 1)


def reference_time(text: str) -> int | None:
    # The server's form, checked quickly; fromisoformat checks the rest of it.
    usual = len(text) == 27 and text[10] == "T" and text[19] == "." and text[26] == "Z"
    if not usual and not TIME.fullmatch(text):
        return None
    try:
        moment = datetime.fromisoformat(text.removesuffix("Z"))
    except ValueError:
        return None
    delta = moment - EPOCH  # both naive: the times are UTC, with Z or without
    return (delta.days * 86_400 + delta.seconds) * 10**6 + delta.microseconds


def reference(body: bytes, ranges: dict[str, tuple[Number, Number]]) -> dict[str, object]:
    """Count, mean, min, max, anomalies and latency per group, one row at a time."""
    # Millions of rows kept as objects would keep the cyclic collector busy for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _reference(body, ranges)
    finally:
        if collecting:
            gc.enable()


def _reference(body: bytes, ranges: dict[str, tuple[Number, Number]]) -> dict[str, object]:
    text = body.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    header: list[str] | None = None
    values: dict[tuple[str, str], list[Number]] = {}
    times: dict[tuple[str, str], list[int]] = {}
    if '"' in text or "\r" in text:
        lines = [line + "\n" for line in text.split("\n")]
        lines[-1] = lines[-1][:-1]
        rows: Iterable[list[str]] = _rows(line for line in lines if line)
    else:  # what csv would read, more quickly: the export's millions of rows
        rows = (line.split(",") for line in text.split("\n") if line)
    for row in rows:
        if not row:
            continue
        if header is None:
            header = [name.strip() for name in row]
            columns = [header.index(name) for name in ("patient_id", "event_type")]
            value_column, time_column = header.index("value"), header.index("event_time")
            continue
        if len(row) != len(header):
            continue
        key = (row[columns[0]], row[columns[1]])
        value = reference_value(row[value_column])
        moment = reference_time(row[time_column])
        if not key[0] or not key[1] or value is None or moment is None:
            continue
        values.setdefault(key, []).append(value)
        times.setdefault(key, []).append(moment)

    def figures(numbers: list[Number], moments: list[int], event_type: str) -> dict[str, object]:
        ordered = sorted(moments)
        gaps = sum(later - earlier for earlier, later in itertools.pairwise(ordered))
        bounds = ranges.get(event_type)
        return {
            "count": len(numbers),
            "mean": float(round(Fraction(sum(numbers)) / len(numbers), 3)),
            "min": min(numbers),
            "max": max(numbers),
            "anomalies": None
            if bounds is None
            else sum(1 for v in numbers if v < bounds[0] or v > bounds[1]),
            "latency": float(round(Fraction(gaps, (len(ordered) - 1) * 10**6), 3))
            if len(ordered) > 1
            else None,
        }

    type_values: dict[str, list[Number]] = {}
    type_times: dict[str, list[int]] = {}
    patients: dict[str, dict[str, object]] = {}
    for (patient, event_type), numbers in sorted(values.items()):
        moments = times[(patient, event_type)]
        patients.setdefault(patient, {})[event_type] = figures(numbers, moments, event_type)
        type_values.setdefault(event_type, []).extend(numbers)
        type_times.setdefault(event_type, []).extend(moments)
    totals = {
        name: figures(numbers, type_times[name], name)
        for name, numbers in sorted(type_values.items())
    }
    return {"patients": patients, "totals": totals}


def _rows(lines: Iterable[str]) -> Iterable[list[str]]:
    """csv.reader's rows, reading plain lines the quick way (a split) and skipping what csv
    cannot read, as the client counts such a line as malformed."""
    pending = iter(lines)
    for line in pending:
        if '"' not in line and "\r" not in line:
            yield line.rstrip("\n").split(",") if line.strip("\n") else []
            continue
        reader = csv.reader(itertools.chain([line], pending))
        try:
            yield next(reader)
        except csv.Error:
            yield ["malformed"]
        except StopIteration:
            return
