"""Fixtures shared by the server tests: a tiny catalog, a server running it, its pools."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from export_server import Catalog, ExportSpec, WorkerPool, running_server

TINY = ExportSpec(
    id="tiny",
    downloads=3,
    min_rows=50,
    max_rows=200,
    event_types=("heart_rate", "spo2", "bp_sys", "bp_dia"),
    patient_pool=("T001", "T002", "T003"),
    first_start=datetime(2025, 1, 1),
    step=timedelta(seconds=7),
)

# Big enough that its body (about 4 MB) cannot be generated and sent before a test reacts.
BIG = ExportSpec(
    id="big",
    downloads=2,
    min_rows=100_000,
    max_rows=100_000,
    event_types=("heart_rate", "spo2"),
    patient_pool=("B001", "B002"),
    first_start=datetime(2025, 1, 1),
    step=timedelta(seconds=3),
)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog([TINY, BIG])


@pytest.fixture(scope="module")
def server_url(catalog: Catalog) -> Iterator[str]:
    with running_server(catalog=catalog, workers=1) as url:
        yield url


@pytest.fixture(scope="session")
def tiny() -> ExportSpec:
    """An export of 3 downloads of 50 to 200 rows."""
    return TINY


@pytest.fixture(scope="session")
def big() -> ExportSpec:
    """An export whose downloads take a while to send (about 4 MB each)."""
    return BIG


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[WorkerPool]:
    """Every worker pool started during the test, in order: servers start their own."""
    started: list[WorkerPool] = []
    real_start = WorkerPool.start

    async def start(self: WorkerPool) -> None:
        started.append(self)
        await real_start(self)

    monkeypatch.setattr(WorkerPool, "start", start)
    return started
