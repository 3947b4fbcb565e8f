"""The deterministic CSV body of a download, byte-identical to the reference server's."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from math import cos, log, sin, sqrt, tau

from ._catalog import EVENT_VALUE_PARAMS, DownloadSpec

__all__ = ["CSV_HEADER", "EVENT_VALUE_PARAMS", "generate_body", "min_body_size"]

CSV_HEADER = b"patient_id,event_time,event_type,value\n"

_US_PER_SECOND = 1_000_000
_US_PER_DAY = 86_400 * _US_PER_SECOND
_MIDNIGHT = datetime.min.time()
_clock: list[str] = []


def _clock_strings() -> list[str]:
    """`"HH:MM:SS"` for every second of a day, built once per process."""
    if not _clock:
        _clock.extend(
            f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)
        )
    return _clock


def min_body_size(download: DownloadSpec) -> int:
    """A lower bound of the size of the body of `download`, header included.

    Each row is at least its shortest patient, a time without fraction, and the shortest event
    type with the shortest value its clamp allows.
    """
    shortest_row = (
        min(map(len, download.patients))
        + len(",YYYY-MM-DDTHH:MM:SSZ,")
        + min(
            len(event_type) + _shortest_number(*EVENT_VALUE_PARAMS[event_type][2:])
            for event_type in download.event_types
        )
        + len(",\n")
    )
    return len(CSV_HEADER) + download.rows * shortest_row


def _shortest_number(low: int, high: int) -> int:
    """The length of the shortest decimal integer from `low` to `high`."""
    if low <= 0 <= high:
        return 1
    return len(str(low if low > 0 else high))


def generate_body(download: DownloadSpec, *, chunk_size: int = 32768) -> Iterator[bytes]:
    """Yield the CSV body of a download: the header line, then runs of whole lines of about
    `chunk_size` bytes.

    This makes exactly the `random.Random` calls of the reference generator, in the same order,
    but inlines them and replaces the per-row `datetime + timedelta(seconds=float)` and
    `isoformat()` with integer microsecond arithmetic that rounds as `timedelta` does.
    """
    yield CSV_HEADER
    rng = random.Random(download.id.bytes)
    rand = rng.random
    getrandbits = rng.getrandbits
    patients = [f"{patient}," for patient in download.patients]
    n_patients = len(patients)
    patient_bits = n_patients.bit_length()
    events = [
        (f"Z,{event_type},", *EVENT_VALUE_PARAMS[event_type]) for event_type in download.event_types
    ]
    n_events = len(events)
    event_bits = n_events.bit_length()
    step_us = download.step // timedelta(microseconds=1)
    step_seconds = download.step.total_seconds()
    clock = _clock_strings()
    start_day = download.start_time.date()
    # Row times count microseconds from the midnight before the first row.
    t = (download.start_time - datetime.combine(start_day, _MIDNIGHT)) // timedelta(microseconds=1)
    day_start = 0
    day_number = 0
    prefix = f"{start_day}T"
    gauss_next = None
    batch = max(1, chunk_size // 48)
    remaining = download.rows
    while remaining:
        n = min(batch, remaining)
        remaining -= n
        lines: list[str] = []
        append = lines.append
        for _ in range(n):
            r = getrandbits(patient_bits)
            while r >= n_patients:
                r = getrandbits(patient_bits)
            patient = patients[r]

            # timedelta(seconds=s): whole seconds exactly, then the fraction times 1e6 split in
            # whole microseconds and a leftover that rounds half to even on the total.
            s = step_seconds * rand()
            whole = int(s)
            frac = s - whole
            us = whole * _US_PER_SECOND
            if frac:
                scaled = frac * 1e6
                whole_us = int(scaled)
                us += whole_us
                leftover = scaled - whole_us
                if leftover > 0.5 or (leftover == 0.5 and us & 1):
                    us += 1
            us += t

            r = getrandbits(event_bits)
            while r >= n_events:
                r = getrandbits(event_bits)
            suffix, mean, sd, lo, hi = events[r]

            z = gauss_next
            gauss_next = None
            if z is None:
                x2pi = rand() * tau
                g2rad = sqrt(-2.0 * log(1.0 - rand()))
                z = cos(x2pi) * g2rad
                gauss_next = sin(x2pi) * g2rad
            value = int(mean + z * sd)
            if value < lo:
                value = lo
            elif value > hi:
                value = hi

            us -= day_start
            if us >= _US_PER_DAY:
                # Each event time lies within its own step, so they never decrease and the
                # day only moves forward.
                day, us = divmod(us, _US_PER_DAY)
                day_start += day * _US_PER_DAY
                day_number += day
                prefix = f"{start_day + timedelta(days=day_number)}T"
            seconds, us = divmod(us, _US_PER_SECOND)
            if us:
                append(f"{patient}{prefix}{clock[seconds]}.{us:06d}{suffix}{value}\n")
            else:
                append(f"{patient}{prefix}{clock[seconds]}{suffix}{value}\n")
            t += step_us
        chunk = "".join(lines).encode()
        yield chunk
        # Re-aim the number of lines per chunk so chunks stay close to chunk_size bytes.
        batch = max(1, n * chunk_size // len(chunk))
