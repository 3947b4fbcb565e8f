import dataclasses
import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from export_server import REFERENCE_CATALOG, Catalog, ExportSpec, download_uuid


def test_reference_exports_and_totals() -> None:
    assert REFERENCE_CATALOG.export_ids == ["demo", "small", "large"]
    totals = {
        export_id: sum(d.rows for d in REFERENCE_CATALOG.downloads(export_id) or [])
        for export_id in REFERENCE_CATALOG.export_ids
    }
    assert totals == {"demo": 18_784, "small": 7_083_793, "large": 153_630_201}
    assert [len(REFERENCE_CATALOG.downloads(e) or []) for e in ("demo", "small", "large")] == [
        2,
        10,
        20,
    ]


def test_demo_metadata_is_the_reference() -> None:
    first, second = REFERENCE_CATALOG.downloads("demo") or []
    assert first.metadata() == {
        "id": "f725622a-22ea-4acc-aab8-810ec8b5e2c6",
        "rows": 9014,
        "event_types": ["bp_sys", "bp_dia"],
        "patients": ["P001", "P004", "P003"],
        "start_time": "2025-08-26T00:00:00",
        "end_time": "2025-08-26T17:31:38",
    }
    assert second.id == uuid.UUID("591ef21e-8a64-413a-b506-37a41cb6b896")
    assert second.rows == 9770
    assert second.start_time == first.end_time


def test_small_first_download() -> None:
    first = (REFERENCE_CATALOG.downloads("small") or [])[0]
    assert first.id == uuid.UUID("2d422b03-f6fa-4575-9679-c2857ac7b9f5")
    assert first.rows == 713_429


def test_download_uuid_is_sha256_based_version_4() -> None:
    assert download_uuid("demo", 0) == uuid.UUID("f725622a-22ea-4acc-aab8-810ec8b5e2c6")
    assert download_uuid("demo", 0).version == 4


def test_time_ranges_are_contiguous_and_rows_in_range(tiny: ExportSpec) -> None:
    catalog = Catalog([tiny])
    downloads = catalog.downloads("tiny") or []
    assert [d.index for d in downloads] == [0, 1, 2]
    assert downloads[0].start_time == tiny.first_start
    for previous, current in itertools.pairwise(downloads):
        assert current.start_time == previous.end_time
    for d in downloads:
        assert tiny.min_rows <= d.rows <= tiny.max_rows
        assert d.end_time == d.start_time + d.rows * tiny.step
        assert 2 <= len(d.patients) <= len(tiny.patient_pool)
        assert set(d.patients) <= set(tiny.patient_pool)


def test_lookups(tiny: ExportSpec) -> None:
    catalog = Catalog([tiny])
    first = (catalog.downloads("tiny") or [])[0]
    assert catalog.download("tiny", first.id) is first
    assert catalog.download("tiny", uuid.uuid4()) is None
    assert catalog.download("demo", first.id) is None
    assert catalog.downloads("demo") is None


def test_export_ids_must_be_unique() -> None:
    spec = ExportSpec(
        id="x",
        downloads=1,
        min_rows=1,
        max_rows=1,
        event_types=("spo2",),
        patient_pool=("A", "B"),
        first_start=datetime(2025, 1, 1),
        step=timedelta(seconds=1),
    )
    with pytest.raises(ValueError, match="unique"):
        Catalog([spec, spec])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"downloads": 0}, "at least one download"),
        ({"min_rows": 0}, "1 <= min_rows <= max_rows"),
        ({"min_rows": 201, "max_rows": 200}, "1 <= min_rows <= max_rows"),
        ({"event_types": ()}, "at least one event type"),
        ({"event_types": ("heart_rate", "temperature")}, "unknown event types \\['temperature'\\]"),
        ({"patient_pool": ("T001",)}, "at least 2 patients"),
        ({"first_start": datetime(2025, 1, 1, tzinfo=UTC)}, "naive first_start"),
        ({"step": timedelta(0)}, "positive step"),
        ({"step": timedelta(seconds=-1)}, "positive step"),
    ],
)
def test_export_specs_are_validated(
    tiny: ExportSpec, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(tiny, **changes)  # type: ignore[arg-type]


def test_the_smallest_valid_export(tiny: ExportSpec) -> None:
    spec = dataclasses.replace(
        tiny, downloads=1, min_rows=1, max_rows=1, event_types=("spo2",), patient_pool=("A", "B")
    )
    [download] = Catalog([spec]).downloads("tiny") or []
    assert download.rows == 1


def test_a_catalog_holds_export_specs() -> None:
    with pytest.raises(TypeError, match="ExportSpec"):
        Catalog(["demo"])  # type: ignore[list-item]
