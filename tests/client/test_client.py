"""The client end to end over a mocked network: discovery, verification, retries, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from export_client import ExportClient
from export_client._download import StreamOptions
from export_client._exceptions import (
    DownloadFailedError,
    IncompleteDownloadError,
    MalformedDownloadError,
    ServerResponseError,
    ServerUnreachableError,
    UnknownExportError,
)
from export_client._metadata import DownloadInfo
from export_client._report import warnings
from export_client._retry import RetryPolicy

from .memory import MemorySource

BASE = "http://server.test"
HEADER = b"patient_id,event_time,event_type,value\n"
BODIES = {
    "d1": HEADER
    + b"P001,2025-08-26T00:00:00.1Z,bp_sys,120\n"
    + b"P001,2025-08-26T00:00:07.2Z,bp_dia,80\n"
    + b"P002,2025-08-26T00:00:14.3Z,bp_sys,121\n",
    "d2": HEADER
    + b"P002,2025-08-26T00:00:21Z,bp_dia,81\n"
    + b"P001,2025-08-26T00:00:28.5Z,bp_sys,119\n",
}
EXPECTED = {
    "patients": {"P001": {"bp_dia": 1, "bp_sys": 2}, "P002": {"bp_dia": 1, "bp_sys": 1}},
    "totals": {"bp_dia": 2, "bp_sys": 3},
}


def metadata(download_id: str, rows: int, patients: list[str] | None = None) -> dict[str, Any]:
    return {
        "data": {
            "id": download_id,
            "rows": rows,
            "event_types": ["bp_sys", "bp_dia"],
            "patients": patients or ["P001", "P002"],
            "start_time": "2025-08-26T00:00:00",
            "end_time": "2025-08-26T00:01:00",
        }
    }


def serve_discovery(mocked: aioresponses, bodies: dict[str, bytes]) -> None:
    mocked.get(f"{BASE}/api/export", payload={"data": {"export_ids": ["demo", "other"]}})
    mocked.get(
        f"{BASE}/api/export/demo", payload={"data": {"id": "demo", "download_ids": list(bodies)}}
    )
    for download_id, body in bodies.items():
        rows = body.count(b"\n") - 1
        mocked.get(f"{BASE}/api/export/demo/{download_id}", payload=metadata(download_id, rows))


def data_url(download_id: str) -> str:
    return f"{BASE}/api/export/demo/{download_id}/data"


async def count(*, retries: int = 3, **options: Any) -> Any:
    retry = RetryPolicy(retries=retries, base_delay=0.01)
    async with ExportClient(BASE, retry=retry, **options) as client:
        return await client.count("demo")


def as_plain(report: Any) -> dict[str, Any]:
    return {
        "patients": {p: dict(types) for p, types in report.patients.items()},
        "totals": dict(report.totals),
    }


async def test_counts_every_download_and_merges(mocked: aioresponses) -> None:
    serve_discovery(mocked, BODIES)
    for download_id, body in BODIES.items():
        mocked.get(data_url(download_id), body=body)
    report = await count()
    assert as_plain(report) == EXPECTED
    assert report.rows == 5
    assert report.retries == 0
    assert report.bytes == sum(map(len, BODIES.values()))
    assert [d.download_id for d in report.downloads] == ["d1", "d2"]


async def test_503_with_retry_after_is_retried(mocked: aioresponses) -> None:
    serve_discovery(mocked, BODIES)
    mocked.get(data_url("d1"), status=503, headers={"Retry-After": "0"})
    for download_id, body in BODIES.items():
        mocked.get(data_url(download_id), body=body)
    report = await count()
    assert as_plain(report) == EXPECTED
    assert report.retries == 1
    assert report.downloads[0].attempts == 2


async def test_cut_stream_is_retried_without_double_counting(mocked: aioresponses) -> None:
    serve_discovery(mocked, BODIES)
    mocked.get(data_url("d1"), exception=aiohttp.ClientPayloadError("payload is not completed"))
    mocked.get(data_url("d1"), body=BODIES["d1"][:70])  # ends short, mid-line
    for download_id, body in BODIES.items():
        mocked.get(data_url(download_id), body=body)
    report = await count()
    assert as_plain(report) == EXPECTED
    assert report.downloads[0].attempts == 3


async def test_a_body_that_stays_short_fails_naming_the_download(mocked: aioresponses) -> None:
    serve_discovery(mocked, BODIES)
    for _ in range(3):
        mocked.get(data_url("d1"), body=BODIES["d1"][:-40])
    mocked.get(data_url("d2"), body=BODIES["d2"])
    with pytest.raises(IncompleteDownloadError) as caught:
        await count(retries=2)
    message = str(caught.value)
    assert "d1" in message
    assert "2 rows" in message
    assert "announces 3" in message
    assert "3 attempts" in message


async def test_more_rows_than_announced_is_an_error(mocked: aioresponses) -> None:
    serve_discovery(mocked, BODIES)
    extra = BODIES["d2"] + b"P001,2025-08-26T00:00:35Z,bp_sys,1\n"
    mocked.get(data_url("d1"), body=BODIES["d1"])
    mocked.get(data_url("d2"), body=extra)
    with pytest.raises(
        IncompleteDownloadError, match="more than the 2 rows its metadata announces"
    ):
        await count(retries=0)


async def test_persistent_server_errors_fail_after_the_retries(mocked: aioresponses) -> None:
    serve_discovery(mocked, BODIES)
    mocked.get(data_url("d1"), body=BODIES["d1"])
    for _ in range(4):
        mocked.get(data_url("d2"), status=500)
    with pytest.raises(DownloadFailedError, match=r"d2: .*500.*4 attempts"):
        await count(retries=3)


async def test_header_without_the_needed_columns_fails_at_once(mocked: aioresponses) -> None:
    bodies = {"d1": b"who,what\nP001,bp_sys\n"}
    serve_discovery(mocked, bodies)
    mocked.get(data_url("d1"), body=bodies["d1"])
    with pytest.raises(MalformedDownloadError, match="d1"):
        await count()


async def test_malformed_rows_are_skipped_and_reported(mocked: aioresponses) -> None:
    bodies = {"d1": BODIES["d1"] + b"P009,only-two\n"}
    serve_discovery(mocked, bodies)
    mocked.get(data_url("d1"), body=bodies["d1"])
    report = await count()
    assert report.malformed == 1
    assert report.downloads[0].malformed_examples == ("P009,only-two",)
    assert report.totals == {"bp_dia": 1, "bp_sys": 2}
    assert any("1 malformed" in warning for warning in warnings(report))


async def test_strict_fails_on_a_malformed_row(mocked: aioresponses) -> None:
    bodies = {"d1": BODIES["d1"] + b"P009,only-two\n"}
    serve_discovery(mocked, bodies)
    mocked.get(data_url("d1"), body=bodies["d1"])
    with pytest.raises(MalformedDownloadError, match="strict"):
        await count(strict=True)


async def test_patients_and_event_types_not_in_the_metadata_are_counted_and_warned(
    mocked: aioresponses,
) -> None:
    bodies = {"d1": BODIES["d1"] + b"P777,2025-08-26T00:00:21Z,temperature,37\n"}
    serve_discovery(mocked, bodies)
    mocked.get(data_url("d1"), body=bodies["d1"])
    report = await count()
    assert report.patients["P777"] == {"temperature": 1}
    assert report.downloads[0].unexpected_patients == ("P777",)
    assert report.downloads[0].unexpected_event_types == ("temperature",)
    assert len(warnings(report)) == 2


async def test_unknown_export_lists_the_known_ones(mocked: aioresponses) -> None:
    mocked.get(f"{BASE}/api/export", payload={"data": {"export_ids": ["demo", "small"]}})
    async with ExportClient(BASE) as client:
        with pytest.raises(UnknownExportError, match="demo, small"):
            await client.count("huge")


async def test_discovery_retries_a_503(mocked: aioresponses) -> None:
    mocked.get(f"{BASE}/api/export", status=503, headers={"Retry-After": "0"})
    mocked.get(f"{BASE}/api/export", payload={"data": {"export_ids": ["demo"]}})
    async with ExportClient(BASE) as client:
        assert await client.export_ids() == ["demo"]


async def test_discovery_gives_up_after_the_retries(mocked: aioresponses) -> None:
    for _ in range(2):
        mocked.get(f"{BASE}/api/export", status=503, headers={"Retry-After": "0"})
    async with ExportClient(BASE, retry=RetryPolicy(retries=1)) as client:
        with pytest.raises(ServerResponseError, match="2 attempts"):
            await client.export_ids()


async def test_unreachable_server_names_the_url() -> None:
    retry = RetryPolicy(retries=1, base_delay=0.01)
    async with ExportClient("http://127.0.0.1:9", retry=retry) as client:
        with pytest.raises(ServerUnreachableError, match=r"127\.0\.0\.1:9.*2 attempts"):
            await client.count("demo")


class _CountingAPI:
    """Serves bodies from memory and records how many streams are open at once."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        self.bodies = bodies
        self.open = 0
        self.most_open = 0

    @asynccontextmanager
    async def open_data(self, export_id: str, download_id: str) -> AsyncIterator[Any]:
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            yield self._Stream(self.bodies[download_id])
        finally:
            self.open -= 1

    class _Stream:
        def __init__(self, body: bytes) -> None:
            self.body = body

        async def chunks(self, **floor: float) -> AsyncIterator[bytes]:
            for start in range(0, len(self.body), 7):
                await asyncio.sleep(0)
                yield self.body[start : start + 7]


@pytest.mark.parametrize("concurrency", [1, 2, 3])
async def test_concurrency_is_bounded(concurrency: int) -> None:
    from export_client._orchestrator import Orchestrator
    from export_client._pool import CountingPool
    from export_client._progress import NoProgress

    bodies = {f"d{i}": BODIES["d1"] for i in range(6)}
    api = _CountingAPI(bodies)
    downloads = [
        DownloadInfo(name, 3, ("P001", "P002"), ("bp_sys", "bp_dia"), "", "") for name in bodies
    ]
    async with CountingPool(2) as pool:
        orchestrator = Orchestrator(
            source=api,  # type: ignore[arg-type]
            export_id="demo",
            concurrency=concurrency,
            policy=RetryPolicy(retries=0),
            pool=pool,
            progress=NoProgress(),
            options=StreamOptions(block_bytes=16),
        )
        counted = await orchestrator.run(downloads)
    assert api.most_open == concurrency
    assert sum(item.rows for item in counted) == 18


async def test_retry_after_is_honoured(mocked: aioresponses) -> None:
    serve_discovery(mocked, BODIES)
    mocked.get(data_url("d1"), status=503, headers={"Retry-After": "1"})
    for download_id, body in BODIES.items():
        mocked.get(data_url(download_id), body=body)
    started = asyncio.get_running_loop().time()
    report = await count()  # backoff 0.01 s: only Retry-After can make it wait a second
    assert asyncio.get_running_loop().time() - started >= 0.95
    assert report.retries == 1


@pytest.mark.parametrize("cut", [b"", b"patient_id,event_ti"])
async def test_a_body_cut_before_its_header_ends_is_retried(
    mocked: aioresponses, cut: bytes
) -> None:
    serve_discovery(mocked, BODIES)
    mocked.get(data_url("d1"), body=cut)
    for download_id, body in BODIES.items():
        mocked.get(data_url(download_id), body=body)
    report = await count()
    assert as_plain(report) == EXPECTED
    assert report.downloads[0].attempts == 2


async def test_metadata_of_another_download_is_refused(mocked: aioresponses) -> None:
    mocked.get(f"{BASE}/api/export", payload={"data": {"export_ids": ["demo"]}})
    mocked.get(f"{BASE}/api/export/demo", payload={"data": {"id": "demo", "download_ids": ["d1"]}})
    mocked.get(f"{BASE}/api/export/demo/d1", payload=metadata("d2", 3))
    async with ExportClient(BASE) as client:
        with pytest.raises(ServerResponseError, match="metadata of download 'd2'"):
            await client.count("demo")


def test_a_server_that_is_not_an_http_url_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        ExportClient("localhost:8000")


# Any ExportSource in place of HTTP


async def test_a_source_in_memory_counts_like_the_network() -> None:
    source = MemorySource(dict(BODIES))
    async with ExportClient(source=source, threads=1) as client:
        report = await client.count("demo")
    assert as_plain(report) == EXPECTED
    assert source.opened == ["d1", "d2"]


async def test_a_source_s_retryable_failure_is_retried_without_double_counting() -> None:
    source = MemorySource(dict(BODIES), failures={"d1": [BODIES["d1"][:60]]})
    retry = RetryPolicy(retries=1, base_delay=0.001)
    async with ExportClient(source=source, retry=retry) as client:
        report = await client.count("demo")
    assert as_plain(report) == EXPECTED
    assert report.downloads[0].attempts == 2
    assert source.opened.count("d1") == 2


async def test_limit_rate_caps_every_download_together() -> None:
    bodies = {f"d{i}": BODIES["d1"] for i in range(4)}
    size = sum(map(len, bodies.values()))
    source = MemorySource(bodies, chunk_size=20)
    started = asyncio.get_running_loop().time()
    async with ExportClient(source=source, limit_rate=size / 1.0, concurrency=4) as client:
        report = await client.count("demo")
    assert asyncio.get_running_loop().time() - started >= 0.85  # a second, less the burst
    assert report.rows == 4 * 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"limit_rate": 0.5}, "limit_rate"),
        ({"cluster": "local:0"}, "local:N"),
        ({"cluster": "local:2", "source": MemorySource({})}, "no source"),
        ({"server": "http://localhost:8000", "cluster": "tcp://10.1.2.3:8786"}, "loopback"),
    ],
)
def test_options_it_cannot_use(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExportClient(**options)
