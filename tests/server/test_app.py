import hashlib
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from export_server import REFERENCE_CATALOG, Catalog, create_app, generate_body, running_server


@pytest.fixture(scope="module")
def reference_url() -> Iterator[str]:
    with running_server(workers=1) as url:
        yield url


async def get(url: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, dict(response.headers), await response.read()


async def get_json(url: str) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def test_list_exports(server_url: str, reference_url: str) -> None:
    assert await get_json(f"{server_url}/api/export") == (
        200,
        {"data": {"export_ids": ["tiny", "big"]}},
    )
    assert await get_json(f"{reference_url}/api/export") == (
        200,
        {"data": {"export_ids": ["demo", "small", "large"]}},
    )


async def test_export(reference_url: str) -> None:
    assert await get_json(f"{reference_url}/api/export/demo") == (
        200,
        {
            "data": {
                "id": "demo",
                "download_ids": [
                    "f725622a-22ea-4acc-aab8-810ec8b5e2c6",
                    "591ef21e-8a64-413a-b506-37a41cb6b896",
                ],
            }
        },
    )


async def test_download_metadata(reference_url: str) -> None:
    status, body = await get_json(
        f"{reference_url}/api/export/demo/f725622a-22ea-4acc-aab8-810ec8b5e2c6"
    )
    assert status == 200
    assert body == {
        "data": {
            "id": "f725622a-22ea-4acc-aab8-810ec8b5e2c6",
            "rows": 9014,
            "event_types": ["bp_sys", "bp_dia"],
            "patients": ["P001", "P004", "P003"],
            "start_time": "2025-08-26T00:00:00",
            "end_time": "2025-08-26T17:31:38",
        }
    }


async def test_data_is_chunked_csv_identical_to_the_reference(reference_url: str) -> None:
    status, headers, body = await get(
        f"{reference_url}/api/export/demo/591ef21e-8a64-413a-b506-37a41cb6b896/data"
    )
    assert status == 200
    assert headers["Content-Type"] == "text/csv; charset=utf-8"
    assert headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in headers
    assert "Accept-Ranges" not in headers
    assert hashlib.sha256(body).hexdigest() == (
        "64975b5e457b80b2a6ddd8081ee32b7260bb171066fd49bc433e18bd18a4433b"
    )


async def test_data_of_a_catalog_of_our_own(server_url: str, catalog: Catalog) -> None:
    for download in catalog.downloads("tiny") or []:
        status, _, body = await get(f"{server_url}/api/export/tiny/{download.id}/data")
        assert status == 200
        assert body == b"".join(generate_body(download))


async def test_a_range_request_gets_the_whole_body(server_url: str, catalog: Catalog) -> None:
    download = (catalog.downloads("tiny") or [])[0]
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{server_url}/api/export/tiny/{download.id}/data", headers={"Range": "bytes=10-"}
        ) as response,
    ):
        assert response.status == 200
        assert await response.read() == b"".join(generate_body(download))


@pytest.mark.parametrize("suffix", ["", "/data"])
async def test_unknown_export(server_url: str, catalog: Catalog, suffix: str) -> None:
    download = (catalog.downloads("tiny") or [])[0]
    assert await get_json(f"{server_url}/api/export/nope{suffix.replace('/data', '')}") == (
        404,
        {"detail": "Export not found"},
    )
    assert await get_json(f"{server_url}/api/export/nope/{download.id}{suffix}") == (
        404,
        {"detail": "Export not found"},
    )


@pytest.mark.parametrize("suffix", ["", "/data"])
async def test_unknown_download(server_url: str, catalog: Catalog, suffix: str) -> None:
    demo_download = (REFERENCE_CATALOG.downloads("demo") or [])[0]
    for download_id in (uuid.uuid4(), demo_download.id):
        assert await get_json(f"{server_url}/api/export/tiny/{download_id}{suffix}") == (
            404,
            {"detail": "Download not found"},
        )


_DEMO_0 = "f725622a-22ea-4acc-aab8-810ec8b5e2c6"
_DEMO_0_HEX = _DEMO_0.replace("-", "")


@pytest.mark.parametrize(
    "download_id",
    [
        _DEMO_0,
        _DEMO_0.upper(),
        _DEMO_0_HEX,
        _DEMO_0_HEX.upper(),
        # Also accepted by the reference (pydantic's UUID parses them), odd as they are.
        "{" + _DEMO_0 + "}",
        "urn:uuid:" + _DEMO_0,
    ],
)
async def test_download_id_forms_the_reference_accepts(
    reference_url: str, download_id: str
) -> None:
    status, body = await get_json(f"{reference_url}/api/export/demo/{download_id}")
    assert status == 200
    assert isinstance(body, dict)
    assert body["data"]["id"] == _DEMO_0


@pytest.mark.parametrize("suffix", ["", "/data"])
@pytest.mark.parametrize(
    "download_id",
    [
        "not-a-uuid",
        "..x",
        "123",
        _DEMO_0[:-1],
        "a%2Fb",
        # Each of these is a UUID to `uuid.UUID`, and not to the reference.
        "{" + _DEMO_0_HEX + "}",
        "{" + _DEMO_0,
        "{{" + _DEMO_0 + "}}",
        "urn:uuid:" + _DEMO_0_HEX,
        "urn:" + _DEMO_0,
        "uuid:" + _DEMO_0,
        "f725-622a22ea4accaab8810ec8b5e2c6",
        _DEMO_0_HEX[:12] + "-" + _DEMO_0_HEX[12:],
        "+" + _DEMO_0_HEX[:-1],
        _DEMO_0_HEX[:8] + "_" + _DEMO_0_HEX[9:],
    ],
)
async def test_download_id_that_is_not_a_uuid(
    reference_url: str, suffix: str, download_id: str
) -> None:
    status, body = await get_json(f"{reference_url}/api/export/demo/{download_id}{suffix}")
    assert status == 422
    assert isinstance(body, dict)
    assert list(body) == ["detail"]
    [error] = body["detail"]
    assert error["type"] == "uuid_parsing"
    assert error["loc"] == ["path", "download_id"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD"])
@pytest.mark.parametrize(
    "path",
    [
        "/api/export",
        "/api/export/demo",
        "/api/export/demo/f725622a-22ea-4acc-aab8-810ec8b5e2c6",
        "/api/export/demo/f725622a-22ea-4acc-aab8-810ec8b5e2c6/data",
    ],
)
async def test_other_methods_are_not_allowed(reference_url: str, method: str, path: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{reference_url}{path}") as response,
    ):
        assert response.status == 405
        assert response.headers["Allow"] == "GET"
        if method != "HEAD":
            assert await response.json() == {"detail": "Method Not Allowed"}


async def test_unknown_path(server_url: str) -> None:
    assert await get_json(f"{server_url}/api/nothing") == (404, {"detail": "Not Found"})


@pytest.mark.parametrize("write_timeout", [0, -1.0, float("inf"), float("nan")])
def test_the_write_timeout_must_be_positive_and_finite(write_timeout: float) -> None:
    with pytest.raises(ValueError, match="write_timeout must be positive and finite"):
        create_app(write_timeout=write_timeout)


@pytest.mark.parametrize("workers", [0, -1, 257])
def test_the_workers_are_from_1_to_256(workers: int) -> None:
    with pytest.raises(ValueError, match=rf"^workers must be from 1 to 256, got {workers}\.$"):
        create_app(workers=workers)
