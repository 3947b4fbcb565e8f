"""The HTTP layer against a mocked network: URLs, shapes, statuses, broken streams."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aioresponses import aioresponses

from export_client._exceptions import (
    ServerResponseError,
    UnknownExportError,
)
from export_client._http import ExportAPI
from export_client._retry import Retryable
from export_client._source import Unreachable

BASE = "http://server.test"
DOWNLOAD = "f725622a-22ea-4acc-aab8-810ec8b5e2c6"
METADATA = {
    "id": DOWNLOAD,
    "rows": 2,
    "event_types": ["bp_sys", "bp_dia"],
    "patients": ["P001", "P004"],
    "start_time": "2025-08-26T00:00:00",
    "end_time": "2025-08-26T00:00:14",
}


@pytest.fixture
async def api() -> AsyncIterator[ExportAPI]:
    async with aiohttp.ClientSession() as session:
        yield ExportAPI(session, BASE + "/")


async def test_export_ids(mocked: aioresponses, api: ExportAPI) -> None:
    mocked.get(f"{BASE}/api/export", payload={"data": {"export_ids": ["demo", "small"]}})
    assert await api.export_ids() == ["demo", "small"]


async def test_download_ids_in_server_order(mocked: aioresponses, api: ExportAPI) -> None:
    mocked.get(
        f"{BASE}/api/export/demo", payload={"data": {"id": "demo", "download_ids": ["b", "a"]}}
    )
    assert await api.download_ids("demo") == ["b", "a"]


async def test_unknown_export_is_404(mocked: aioresponses, api: ExportAPI) -> None:
    mocked.get(f"{BASE}/api/export/nope", status=404, payload={"detail": "Export not found"})
    with pytest.raises(UnknownExportError):
        await api.download_ids("nope")


async def test_path_segments_are_encoded(api: ExportAPI) -> None:
    assert api.url("a/b", "c d") == f"{BASE}/api/export/a%2Fb/c%20d"


async def test_download_info(mocked: aioresponses, api: ExportAPI) -> None:
    mocked.get(f"{BASE}/api/export/demo/{DOWNLOAD}", payload={"data": METADATA})
    info = await api.download_info("demo", DOWNLOAD)
    assert info.rows == 2
    assert info.patients == ("P001", "P004")
    assert info.event_types == ("bp_sys", "bp_dia")
    assert info.to_dict() == METADATA


@pytest.mark.parametrize("missing", ["rows", "patients", "id"])
async def test_download_info_without_a_field(
    mocked: aioresponses, api: ExportAPI, missing: str
) -> None:
    data = {key: value for key, value in METADATA.items() if key != missing}
    mocked.get(f"{BASE}/api/export/demo/{DOWNLOAD}", payload={"data": data})
    with pytest.raises(ServerResponseError, match=missing):
        await api.download_info("demo", DOWNLOAD)


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"export_ids": []}', b'{"data": {"export_ids": "demo"}}', b"[1]"],
)
async def test_malformed_json_bodies(mocked: aioresponses, api: ExportAPI, body: bytes) -> None:
    mocked.get(f"{BASE}/api/export", body=body)
    with pytest.raises(ServerResponseError):
        await api.export_ids()


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
async def test_server_errors_are_transient(
    mocked: aioresponses, api: ExportAPI, status: int
) -> None:
    mocked.get(f"{BASE}/api/export", status=status, headers={"Retry-After": "7"})
    with pytest.raises(Retryable) as caught:
        await api.export_ids()
    assert caught.value.retry_after == 7.0
    assert str(status) in str(caught.value)


@pytest.mark.parametrize(("header", "expected"), [("2.5", 2.5), ("-3", 0.0), ("soon", None)])
async def test_retry_after_values(
    mocked: aioresponses, api: ExportAPI, header: str, expected: float | None
) -> None:
    mocked.get(f"{BASE}/api/export", status=503, headers={"Retry-After": header})
    with pytest.raises(Retryable) as caught:
        await api.export_ids()
    assert caught.value.retry_after == expected


async def test_other_client_errors_are_final(mocked: aioresponses, api: ExportAPI) -> None:
    mocked.get(f"{BASE}/api/export/demo/x", status=422, payload={"detail": [{"msg": "uuid"}]})
    with pytest.raises(ServerResponseError, match="422"):
        await api.download_info("demo", "x")


async def test_connection_refused_is_a_connect_error() -> None:
    async with aiohttp.ClientSession() as session:
        closed = ExportAPI(session, "http://127.0.0.1:9")
        with pytest.raises(Unreachable):
            await closed.export_ids()


async def test_timeout_is_transient(mocked: aioresponses, api: ExportAPI) -> None:
    mocked.get(f"{BASE}/api/export", exception=TimeoutError())
    with pytest.raises(Retryable, match="timed out"):
        await api.export_ids()


async def test_data_stream_yields_the_body(mocked: aioresponses, api: ExportAPI) -> None:
    body = b"patient_id,event_time,event_type,value\nP001,t,bp_sys,1\n"
    mocked.get(f"{BASE}/api/export/demo/{DOWNLOAD}/data", body=body, content_type="text/csv")
    async with api.open_data("demo", DOWNLOAD) as stream:
        received = b"".join([chunk async for chunk in stream.chunks()])
    assert received == body


async def test_data_stream_cut_is_transient(mocked: aioresponses, api: ExportAPI) -> None:
    mocked.get(
        f"{BASE}/api/export/demo/{DOWNLOAD}/data",
        exception=aiohttp.ClientPayloadError("Response payload is not completed"),
    )

    async def drain() -> None:
        async with api.open_data("demo", DOWNLOAD) as stream:
            async for _ in stream.chunks():
                pass

    with pytest.raises(Retryable, match="not completed"):
        await drain()
