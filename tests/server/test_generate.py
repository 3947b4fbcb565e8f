import dataclasses
import hashlib
import random
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export_server import (
    CSV_HEADER,
    REFERENCE_CATALOG,
    Catalog,
    DownloadSpec,
    ExportSpec,
    generate_body,
)
from export_server._generate import EVENT_VALUE_PARAMS, min_body_size


def plain_lines(download: DownloadSpec) -> Iterator[str]:
    """The generation exactly as the spec words it, step by step."""
    rng = random.Random(download.id.bytes)
    t = download.start_time
    step_seconds = download.step.total_seconds()
    for _ in range(download.rows):
        patient_id = rng.choice(download.patients)
        event_time = t + timedelta(seconds=rng.uniform(0, step_seconds))
        event_type = rng.choice(download.event_types)
        mean, sd, lo, hi = EVENT_VALUE_PARAMS[event_type]
        value = max(lo, min(hi, int(rng.gauss(mean, sd))))
        yield f"{patient_id},{event_time.isoformat()}Z,{event_type},{value}\n"
        t = t + download.step


def fast_lines(download: DownloadSpec, chunk_size: int = 32768) -> list[str]:
    body = b"".join(generate_body(download, chunk_size=chunk_size)).decode()
    assert body.startswith(CSV_HEADER.decode())
    return body.splitlines(keepends=True)[1:]


@pytest.mark.parametrize(
    ("export_id", "index", "sha256"),
    [
        ("demo", 0, "40c49c8163ce69902de6b955bf73dc67084e94dd22f296f8868d49317dd58bf7"),
        ("demo", 1, "64975b5e457b80b2a6ddd8081ee32b7260bb171066fd49bc433e18bd18a4433b"),
        ("small", 0, "2438ba954016ef15be34d7dcb40de51bab5d0515a2b2acba3ba72b9adf63605f"),
    ],
)
def test_reference_sha256(export_id: str, index: int, sha256: str) -> None:
    download = (REFERENCE_CATALOG.downloads(export_id) or [])[index]
    digest = hashlib.sha256()
    for chunk in generate_body(download):
        digest.update(chunk)
    assert digest.hexdigest() == sha256


def test_chunks_are_header_then_whole_lines_of_about_chunk_size() -> None:
    download = (REFERENCE_CATALOG.downloads("demo") or [])[0]
    chunks = list(generate_body(download, chunk_size=4096))
    assert chunks[0] == CSV_HEADER
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    assert all(2048 <= len(chunk) <= 6144 for chunk in chunks[1:-1])
    assert sum(chunk.count(b"\n") for chunk in chunks) == download.rows + 1


@pytest.mark.parametrize(
    ("step", "first_start"),
    [
        (timedelta(seconds=7), datetime(2025, 8, 26)),
        (timedelta(seconds=3), datetime(2025, 8, 26)),
        (timedelta(milliseconds=300), datetime(2025, 8, 26)),
        (timedelta(microseconds=1), datetime(2025, 12, 31, 23, 59, 59, 999_900)),
        (timedelta(microseconds=3), datetime(2024, 2, 28, 23, 59, 59, 999_500)),
        (timedelta(seconds=1, microseconds=234_567), datetime(2025, 1, 1, 12, 0, 0, 1)),
        (timedelta(microseconds=7_777_777), datetime(2025, 8, 26)),
        (timedelta(days=1, seconds=1), datetime(2025, 8, 26)),
    ],
)
def test_fast_generator_matches_plain_spec(
    tiny: ExportSpec, step: timedelta, first_start: datetime
) -> None:
    spec = dataclasses.replace(tiny, step=step, first_start=first_start, max_rows=400)
    for download in Catalog([spec]).downloads("tiny") or []:
        assert fast_lines(download, chunk_size=512) == list(plain_lines(download))


def test_times_without_microseconds_are_written_without_fraction(tiny: ExportSpec) -> None:
    # With a 1 µs step the first download crosses midnight, where isoformat drops the fraction.
    spec = dataclasses.replace(
        tiny,
        step=timedelta(microseconds=1),
        first_start=datetime(2025, 12, 31, 23, 59, 59, 999_990),
    )
    lines = [
        line
        for download in Catalog([spec]).downloads("tiny") or []
        for line in fast_lines(download)
    ]
    assert any(",2026-01-01T00:00:00Z," in line for line in lines)
    assert any(",2026-01-01T00:00:00.0000" in line for line in lines)


@settings(max_examples=40, deadline=None)
@given(
    export_id=st.text(min_size=1, max_size=8),
    step_us=st.integers(min_value=1, max_value=3 * 86_400 * 1_000_000),
    start_us=st.integers(min_value=0, max_value=86_400 * 1_000_000 - 1),
)
def test_fast_generator_matches_plain_spec_for_any_step(
    export_id: str, step_us: int, start_us: int
) -> None:
    spec = ExportSpec(
        id=export_id,
        event_types=("heart_rate", "spo2", "bp_sys", "bp_dia"),
        patient_pool=("T001", "T002", "T003"),
        min_rows=50,
        downloads=1,
        max_rows=60,
        step=timedelta(microseconds=step_us),
        first_start=datetime(2025, 3, 1) + timedelta(microseconds=start_us),
    )
    download = (Catalog([spec]).downloads(export_id) or [])[0]
    assert fast_lines(download, chunk_size=256) == list(plain_lines(download))


def test_min_body_size_is_a_lower_bound_of_every_body(tiny: ExportSpec) -> None:
    catalog = Catalog(
        [
            tiny,
            dataclasses.replace(tiny, id="names", patient_pool=("A", "BB", "CCCCC")),
            dataclasses.replace(tiny, id="one-type", event_types=("spo2",), downloads=2),
            # Times a few microseconds apart, in a year written with a leading zero.
            dataclasses.replace(
                tiny, id="micro", step=timedelta(microseconds=3), first_start=datetime(999, 1, 1)
            ),
        ]
    )
    for export_id in catalog.export_ids:
        for download in catalog.downloads(export_id) or []:
            size = sum(map(len, generate_body(download)))
            assert min_body_size(download) <= size
            # Not trivially low either: a row is at least 31 bytes.
            assert min_body_size(download) >= len(CSV_HEADER) + download.rows * 31
