"""The statistics core in pure Python: the kernel's fallback for statistics, and its reference.

Like the counting core it has a fast path for a sub-block of quote-free, well-formed lines,
done with C-level operations over whole columns rather than a Python step per row:

- times written alike (the usual case: every one the same length, with the same `Z`) are
  checked by their shape (digits turned to `0` by one `translate`, against the first time's
  shape repeated), the time of day by its digits taken with strided slices of the column, and
  the dates once per distinct date, found by bisection when the times are in order; other
  times go through one regular expression, and are rewritten so that they order as text;
- values are counted into a histogram of (group, value) pairs, and each distinct value is
  parsed (and checked) once, with `parse_value`, as are the patients and event types for
  emptiness: a few hundred keys instead of every row;
- a group's earliest and latest time are the first and last it has in time order.

Anything the fast path cannot prove goes row by row: the counting core's exact path, which adds
each row with `add_row`.
"""

from __future__ import annotations

import bisect
import operator
import re
from collections import Counter

from ._layout import CsvLayout
from ._stats import GroupStats, Number, Statistics, parse_time, parse_value

__all__ = ["add_row", "count_stats_fast"]

Groups = dict[tuple[bytes, bytes], GroupStats]

_DIGITS = b"0123456789"
_ZEROS = bytes.maketrans(_DIGITS, b"0" * 10)
_TIME = re.compile(
    rb"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    rb"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?Z?"
)
_TIMES = re.compile(rb"(?:" + _TIME.pattern + rb"\n)*")
_DATE = operator.itemgetter(slice(0, 10))
_PAD = [
    (re.compile(rb"(\.[0-9]{%d})\n" % k), rb"\g<1>" + b"0" * (6 - k) + b"\n") for k in range(1, 6)
]
_WHOLE_SECONDS = re.compile(rb"(:[0-9][0-9])\n")
# For the hour's digits: tens of 2 (as 1) and units above 3 (as 1), each else 0.
_TENS_OF_TWENTY = bytes.maketrans(_DIGITS, b"\0\0\1\0\0\0\0\0\0\0")
_UNITS_ABOVE_THREE = bytes.maketrans(_DIGITS, b"\0\0\0\0\1\1\1\1\1\1")


def count_stats_fast(fields: list[bytes], layout: CsvLayout, stats: Statistics) -> Groups | None:
    """The groups of well-formed lines' `fields` (all of their fields, line after line); None
    if any line's time or value does not parse, or a patient or event type is empty."""
    ncols = layout.field_count
    assert layout.time_index is not None
    assert layout.value_index is not None
    checked = _checked_times(fields[layout.time_index :: ncols])
    if checked is None:
        return None
    times, in_order = checked
    patients = fields[layout.patient_index :: ncols]
    event_types = fields[layout.event_type_index :: ncols]
    values = fields[layout.value_index :: ncols]
    found = _groups_of_values(Counter(zip(patients, event_types, values, strict=True)), stats)
    if found is None:
        return None
    if not in_order:
        order = sorted(range(len(times)), key=times.__getitem__)
        patients = list(map(patients.__getitem__, order))
        event_types = list(map(event_types.__getitem__, order))
        times = list(map(times.__getitem__, order))
    # In time order, a group's earliest time is at its first row and its latest at its last.
    first, last = _ends(patients, event_types, found)
    for key, group in found.items():
        group.earliest = _time(times[first[key]])
        group.latest = _time(times[last[key]])
    return found


def _checked_times(times: list[bytes]) -> tuple[list[bytes], bool] | None:
    """`times` if every one parses, rewritten if need be so that they order as text, and
    whether they are in order; or None."""
    joined = b"\n".join(times) + b"\n"
    line = len(times[0]) + 1
    shape = times[0].translate(_ZEROS) + b"\n"
    if _TIME.fullmatch(times[0]) is not None and joined.translate(_ZEROS) == shape * len(times):
        # All written alike: the first is valid, so where its digits are, everyone's are; the
        # time of day is checked on its own digits (deleting the digits allowed leaves none).
        hour_tens = joined[11::line]
        if hour_tens.translate(None, b"012") or joined[14::line].translate(None, b"012345"):
            return None
        if joined[17::line].translate(None, b"012345"):
            return None
        # No hour 24 to 29: a tens of 2 and a units above 3 in one row.
        tens = int.from_bytes(hour_tens.translate(_TENS_OF_TWENTY))
        if tens & int.from_bytes(joined[12::line].translate(_UNITS_ABOVE_THREE)):
            return None
        comparable = times
    elif _TIMES.fullmatch(joined) is not None:
        comparable = _comparable(joined)
    else:
        return None
    in_order = _in_time_order(comparable)
    # The shape and the expression check every field's range but a day's: February 30.
    if any(parse_time(date + b"T00:00:00") is None for date in _dates(comparable, in_order)):
        return None
    return comparable, in_order


def _dates(times: list[bytes], in_order: bool) -> set[bytes]:
    """The distinct dates of the times (`YYYY-MM-DD`), which are `in_order` or not."""
    if not in_order:
        return set(map(_DATE, times))
    # In order, each date's times are one run: jump from run to run. A date's times all sort
    # before the date followed by "U", as the date is followed by "T".
    dates = set()
    start = 0
    while start < len(times):
        date = times[start][:10]
        dates.add(date)
        start = bisect.bisect_left(times, date + b"U", lo=start)
    return dates


def _ends(
    patients: list[bytes], event_types: list[bytes], groups: Groups
) -> tuple[dict[tuple[bytes, bytes], int], dict[tuple[bytes, bytes], int]]:
    """Each group's first and last row."""
    if len(groups) > 32:  # a few groups share the rows; for many, one pass with dicts
        keys = list(zip(patients, event_types, strict=True))
        rows = range(len(keys))
        return dict(zip(reversed(keys), reversed(rows), strict=True)), dict(
            zip(keys, rows, strict=True)
        )
    last_row = len(patients) - 1
    backwards = (patients[::-1], event_types[::-1])
    first = {key: _find(patients, event_types, key) for key in groups}
    last = {key: last_row - _find(*backwards, key) for key in groups}
    return first, last


def _find(patients: list[bytes], event_types: list[bytes], key: tuple[bytes, bytes]) -> int:
    # list.index runs in C; the event type matches within a few of the patient's rows.
    row = patients.index(key[0])
    while event_types[row] != key[1]:
        row = patients.index(key[0], row + 1)
    return row


def _groups_of_values(
    histogram: Counter[tuple[bytes, bytes, bytes]], stats: Statistics
) -> Groups | None:
    """Each group's count, sum, extremes and anomalies, from its (value, occurrences) pairs;
    None if a patient or an event type is empty or a value does not parse. Checking the few
    distinct keys is cheaper than searching every row's fields."""
    parsed: dict[bytes, Number | None] = {}
    groups: Groups = {}
    for (patient, event_type, text), times in histogram.items():
        if text in parsed:
            value = parsed[text]
        else:
            value = parsed[text] = parse_value(text)
        if value is None or not patient or not event_type:
            return None
        bounds = stats.ranges.get(event_type)
        anomalies = None if bounds is None else 0 if bounds[0] <= value <= bounds[1] else times
        group = groups.get((patient, event_type))
        if group is None:
            groups[(patient, event_type)] = GroupStats(
                times, value * times, value, value, anomalies, 0, 0
            )
            continue
        group.count += times
        group.total += value * times
        if value < group.minimum:
            group.minimum = value
        elif value > group.maximum:
            group.maximum = value
        if anomalies:
            assert group.anomalies is not None
            group.anomalies += anomalies
    return groups


def _time(text: bytes) -> int:
    moment = parse_time(text)
    assert moment is not None, "checked with the column"
    return moment


def _comparable(joined: bytes) -> list[bytes]:
    """Times rewritten as `YYYY-MM-DDTHH:MM:SS.ffffff`, which order as text as they do in time."""
    joined = joined.replace(b"Z\n", b"\n")
    for pattern, replacement in _PAD:
        joined = pattern.sub(replacement, joined)
    joined = _WHOLE_SECONDS.sub(rb"\1.000000\n", joined)
    return joined.split(b"\n")[:-1]


def _in_time_order(times: list[bytes]) -> bool:
    return all(map(operator.le, times, times[1:]))


def add_row(
    groups: Groups,
    key: tuple[bytes, bytes],
    value: Number,
    moment: int,
    stats: Statistics,
) -> None:
    """Adds one row's value and time to its group."""
    group = groups.get(key)
    bounds = stats.ranges.get(key[1])
    anomaly = 0 if bounds is None or bounds[0] <= value <= bounds[1] else 1
    if group is None:
        groups[key] = GroupStats(
            1, value, value, value, None if bounds is None else anomaly, moment, moment
        )
        return
    group.count += 1
    group.total += value
    if value < group.minimum:
        group.minimum = value
    elif value > group.maximum:
        group.maximum = value
    if group.anomalies is not None:
        group.anomalies += anomaly
    if moment < group.earliest:
        group.earliest = moment
    elif moment > group.latest:
        group.latest = moment
