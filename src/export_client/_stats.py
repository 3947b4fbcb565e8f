"""Statistics per patient and event type: count, mean, min, max, anomalies, latency.

Every figure is exact and streams: a group keeps a fixed set of accumulators (the count, the
sum of its values as an exact number, the smallest and largest value, the anomalies, the
earliest and latest time), whatever the number of rows. The average gap between consecutive
events in time order telescopes to (latest - earliest) / (count - 1), so no row is kept and
none needs sorting.

A row counts for statistics only if its time and value parse (`parse_time`, `parse_value`);
otherwise it is malformed in this mode.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import cached_property

__all__ = [
    "DEFAULT_NORMAL_RANGES",
    "GroupStats",
    "Number",
    "Statistics",
    "parse_range",
    "parse_time",
    "parse_value",
]

Number = int | Fraction

# Outside these, a value is an anomaly (strict comparisons: a value on a bound is normal).
DEFAULT_NORMAL_RANGES: Mapping[str, tuple[Number, Number]] = {
    "heart_rate": (40, 180),
    "spo2": (85, 100),
    "bp_sys": (90, 200),
    "bp_dia": (60, 120),
}

_VALUE = re.compile(rb"[+-]?[0-9]+(?:\.[0-9]+)?")
# More digits than any measurement has; bounded so that every figure stays a finite float in
# the JSON (and clear of Python's limit on converting long digit strings).
MAX_VALUE_DIGITS = 300
_TIME = re.compile(
    rb"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?Z?"
)
_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def parse_value(text: bytes) -> Number | None:
    """A value: an integer or a decimal of at most 300 digits (`-12`, `97`, `97.5`), or None."""
    if len(text) > MAX_VALUE_DIGITS + 2 or _VALUE.fullmatch(text) is None:
        return None
    if b"." in text:
        if len(text) > MAX_VALUE_DIGITS + 1 + (text[0] in b"+-"):
            return None
        return Fraction(Decimal(text.decode()))
    if len(text) > MAX_VALUE_DIGITS + (text[0] in b"+-"):
        return None
    return int(text)


def parse_time(text: bytes) -> int | None:
    """Microseconds since 1970-01-01T00:00:00 UTC of an ISO 8601 time; None if it is not one.

    The form is `YYYY-MM-DDTHH:MM:SS`, with up to six digits of fraction and an optional `Z`;
    a time without `Z` is taken as UTC too, as the API's times are.
    """
    match = _TIME.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction = match.group(7)
    micro = int(fraction.ljust(6, b"0")) if fraction else 0
    try:
        moment = datetime(year, month, day, hour, minute, second, micro)
    except ValueError:  # month 13, February 30, hour 24, ...
        return None
    return (moment - _EPOCH) // _MICROSECOND


def parse_range(text: str) -> tuple[str, tuple[Number, Number]]:
    """`TYPE=LO:HI` as given to --normal-range; ValueError if it is not that."""
    event_type, equals, bounds = text.partition("=")
    low, colon, high = bounds.partition(":")
    values = (parse_value(low.strip().encode()), parse_value(high.strip().encode()))
    if not (equals and colon and event_type.strip()) or None in values:
        raise ValueError(f"{text!r} is not TYPE=LO:HI (for example heart_rate=40:180)")
    lo, hi = values
    assert lo is not None
    assert hi is not None
    if lo > hi:
        raise ValueError(f"{text!r} has its low bound above its high bound")
    return event_type.strip(), (lo, hi)


@dataclass(frozen=True)
class Statistics:
    """What counting statistics needs beyond the layout: the normal range per event type."""

    ranges: Mapping[bytes, tuple[Number, Number]]

    @cached_property
    def kernel_bounds(self) -> dict[bytes, tuple[int, int]]:
        """The ranges as integer bounds for the kernel, which sees integer values only: for
        an integer v, v < lo exactly when v < ceil(lo), and v > hi exactly when v > floor(hi)."""
        return {name: (math.ceil(lo), math.floor(hi)) for name, (lo, hi) in self.ranges.items()}

    @classmethod
    def of(cls, ranges: Mapping[str, tuple[Number, Number]] | None = None) -> Statistics:
        """The default ranges, with `ranges` added or overriding them."""
        merged = {**DEFAULT_NORMAL_RANGES, **(ranges or {})}
        return cls({name.encode(): bounds for name, bounds in merged.items()})


@dataclass
class GroupStats:
    """The accumulators of one group: one patient's events of one type, or a type's."""

    count: int
    total: Number  # the sum of the values, exactly
    minimum: Number
    maximum: Number
    anomalies: int | None  # None: no normal range known for the event type
    earliest: int  # microseconds since the epoch
    latest: int

    def merge(self, other: GroupStats) -> None:
        self.count += other.count
        self.total += other.total
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        if self.anomalies is not None and other.anomalies is not None:
            self.anomalies += other.anomalies
        self.earliest = min(self.earliest, other.earliest)
        self.latest = max(self.latest, other.latest)

    def copy(self) -> GroupStats:
        return GroupStats(*vars(self).values())

    @property
    def mean(self) -> Fraction:
        return Fraction(self.total) / self.count

    @property
    def latency(self) -> Fraction | None:
        """The average gap in seconds between consecutive events, None for fewer than two."""
        if self.count < 2:
            return None
        return Fraction(self.latest - self.earliest, (self.count - 1) * 1_000_000)

    def to_dict(self) -> dict[str, object]:
        """The group as the JSON shows it: mean and latency rounded to 3 decimals."""
        latency = self.latency
        return {
            "count": self.count,
            "mean": float(round(self.mean, 3)),
            "min": _number(self.minimum),
            "max": _number(self.maximum),
            "anomalies": self.anomalies,
            "latency": None if latency is None else float(round(latency, 3)),
        }


def _number(value: Number) -> int | float:
    # JSON readers (and orjson) keep integers to 64 bits; beyond, a float is what they can read.
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    return float(value)
