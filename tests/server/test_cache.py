import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from export_server import Catalog, create_app, generate_body, running_server


async def fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in response.headers
        return await response.read()


def leftovers(cache_dir: Path) -> list[str]:
    return sorted(path.name for path in cache_dir.iterdir())


async def test_first_response_is_cached_and_later_ones_come_from_disk(
    catalog: Catalog, tmp_path: Path
) -> None:
    download = (catalog.downloads("tiny") or [])[1]
    expected = b"".join(generate_body(download))
    url = f"/api/export/tiny/{download.id}/data"
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        assert await fetch(base + url) == expected
        cached = tmp_path / f"{download.id}.csv"
        assert leftovers(tmp_path) == [cached.name]
        assert cached.read_bytes() == expected
        assert await fetch(base + url) == expected
        # Proof that the second response came from the file rather than from a worker.
        cached.write_bytes(b"patient_id,event_time,event_type,value\nfrom,the,cache,1\n")
        assert await fetch(base + url) == cached.read_bytes()


async def test_cached_body_larger_than_a_sendfile_segment(catalog: Catalog, tmp_path: Path) -> None:
    download = (catalog.downloads("big") or [])[0]
    expected = b"".join(generate_body(download))
    assert len(expected) > 4 << 20
    url = f"/api/export/big/{download.id}/data"
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        assert await fetch(base + url) == expected
        assert await fetch(base + url) == expected
    assert leftovers(tmp_path) == [f"{download.id}.csv"]


async def test_an_interrupted_first_stream_leaves_no_cache_file(
    catalog: Catalog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    download = (catalog.downloads("big") or [])[1]
    url = f"/api/export/big/{download.id}/data"
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        async with aiohttp.ClientSession() as session:
            response = await session.get(base + url)
            await response.content.readexactly(1000)
            assert any(name.endswith(".tmp") for name in leftovers(tmp_path))
            response.close()
        for _ in range(100):
            if not leftovers(tmp_path):
                break
            await asyncio.sleep(0.05)
        assert leftovers(tmp_path) == []
    # A client going away is not a server error.
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_stale_temporary_files_are_removed(catalog: Catalog, tmp_path: Path) -> None:
    download = (catalog.downloads("tiny") or [])[0]
    stale = tmp_path / f"{download.id}.csv.0123456789abcdef.tmp"
    stale.write_bytes(b"patient_id,event_time,event_type,value\n")
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("kept")
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path):
        assert leftovers(tmp_path) == ["notes.txt"]


async def test_cache_dir_is_created(catalog: Catalog, tmp_path: Path) -> None:
    cache_dir = tmp_path / "a" / "b"
    download = (catalog.downloads("tiny") or [])[0]
    with running_server(create_app(catalog, workers=1, cache_dir=cache_dir)) as base:
        await fetch(f"{base}/api/export/tiny/{download.id}/data")
    assert leftovers(cache_dir) == [f"{download.id}.csv"]
