import asyncio
import errno
import logging
import os
import stat
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiofiles
import aiohttp
import pytest

from export_server import Catalog, generate_body, running_server
from export_server._cache import DiskCache


async def fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in response.headers
        return await response.read()


def leftovers(cache_dir: Path) -> list[str]:
    return sorted(path.name for path in cache_dir.iterdir())


async def wait_until(condition: Callable[[], bool]) -> None:
    # The cache file is published just after the client got the whole body.
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.02)
    assert condition()


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_first_response_is_cached_and_later_ones_come_from_disk(
    catalog: Catalog, tmp_path: Path
) -> None:
    download = (catalog.downloads("tiny") or [])[1]
    expected = b"".join(generate_body(download))
    url = f"/api/export/tiny/{download.id}/data"
    cached = tmp_path / f"{download.id}.csv"
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        assert await fetch(base + url) == expected
        await wait_until(lambda: leftovers(tmp_path) == [cached.name])
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
        await wait_until(lambda: leftovers(tmp_path) == [f"{download.id}.csv"])
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
        await wait_until(lambda: not leftovers(tmp_path))
    # A client going away is not a server error.
    assert problems(caplog) == []


async def test_two_concurrent_first_requests_cache_one_file(
    catalog: Catalog, tmp_path: Path
) -> None:
    download = (catalog.downloads("big") or [])[1]
    expected = b"".join(generate_body(download))
    url = f"/api/export/big/{download.id}/data"
    with running_server(catalog=catalog, workers=2, cache_dir=tmp_path) as base:
        first, second = await asyncio.gather(fetch(base + url), fetch(base + url))
        assert first == expected
        assert second == expected
        await wait_until(lambda: leftovers(tmp_path) == [f"{download.id}.csv"])
    assert leftovers(tmp_path) == [f"{download.id}.csv"]
    assert (tmp_path / f"{download.id}.csv").read_bytes() == expected


def failing_cache(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Make the cache files fail the way `how` says."""
    real_open = aiofiles.open

    def open_file(path: Path, mode: str) -> Any:
        if how == "create":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        opening = real_open(path, mode)  # type: ignore[call-overload]

        async def opened() -> Any:
            file = await opening
            if how == "write":

                async def write(data: bytes) -> int:
                    raise OSError(errno.ENOSPC, "No space left on device")

                file.write = write
            elif how == "removed":
                # By someone else, while the body is being written.
                await asyncio.to_thread(path.unlink)
            return file

        return opened()

    monkeypatch.setattr(aiofiles, "open", open_file)


@pytest.mark.parametrize("how", ["create", "write", "removed"])
async def test_the_cache_is_best_effort(
    catalog: Catalog,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    download = (catalog.downloads("big") or [])[0]
    expected = b"".join(generate_body(download))
    url = f"/api/export/big/{download.id}/data"
    failing_cache(monkeypatch, how)
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        assert await fetch(base + url) == expected
        await wait_until(lambda: bool(problems(caplog)))
        assert leftovers(tmp_path) == []
        monkeypatch.undo()
        # Once the cache works again, it caches.
        assert await fetch(base + url) == expected
        await wait_until(lambda: leftovers(tmp_path) == [f"{download.id}.csv"])
    [warning] = problems(caplog)
    assert warning.startswith("Not caching ")
    assert str(download.id) in warning


async def test_an_unreadable_cache_file_is_generated_instead(
    catalog: Catalog, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    download = (catalog.downloads("tiny") or [])[0]
    (tmp_path / f"{download.id}.csv").mkdir()
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path) as base:
        assert await fetch(f"{base}/api/export/tiny/{download.id}/data") == b"".join(
            generate_body(download)
        )
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [
        logging.WARNING,
        logging.WARNING,  # reading the cached body, then publishing the new one
    ]


async def test_stale_temporary_files_are_removed_and_nothing_else(
    catalog: Catalog, tmp_path: Path
) -> None:
    download = (catalog.downloads("tiny") or [])[0]
    stale = tmp_path / f"{download.id}.csv.0123456789abcdef.tmp"
    stale.write_bytes(b"patient_id,event_time,event_type,value\n")
    kept = [
        "notes.txt",
        "data.csv.old.tmp",
        f"{download.id}.csv.old.tmp",
        f"{download.id}.csv.0123456789ABCDEF.tmp",
        f"{download.id.hex}.csv.0123456789abcdef.tmp",
        f"x{download.id}.csv.0123456789abcdef.tmp",
        f"{uuid.uuid4()}.csv.0123456789abcdef0.tmp",
    ]
    for name in kept:
        (tmp_path / name).write_text("kept")
    with running_server(catalog=catalog, workers=1, cache_dir=tmp_path):
        assert leftovers(tmp_path) == sorted(kept)
    assert leftovers(tmp_path) == sorted(kept)


async def test_cache_dir_is_created(catalog: Catalog, tmp_path: Path) -> None:
    cache_dir = tmp_path / "a" / "b"
    download = (catalog.downloads("tiny") or [])[0]
    with running_server(catalog, workers=1, cache_dir=cache_dir) as base:
        await fetch(f"{base}/api/export/tiny/{download.id}/data")
    assert leftovers(cache_dir) == [f"{download.id}.csv"]


async def test_commit_syncs_the_file_then_renames_then_syncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    loop_thread = threading.current_thread()

    def fsync(fd: int) -> None:
        assert threading.current_thread() is not loop_thread, "fsync blocked the event loop"
        events.append("fsync directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(source: Path, target: Path) -> None:
        events.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    cache = DiskCache(tmp_path)
    download_id = uuid.uuid4()
    writer = await cache.writer(download_id)
    assert writer is not None
    async with writer:
        await writer.write(b"patient_id,event_time,event_type,value\n")
        await writer.commit()
    assert events == ["fsync file", "rename", "fsync directory"]
    assert leftovers(tmp_path) == [f"{download_id}.csv"]
