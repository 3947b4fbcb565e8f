import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest

from export_server import Catalog, FaultConfig, generate_body, running_server


async def read_data(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes, bool]:
    """The status, the bytes received, and whether the stream ended properly."""
    received = bytearray()
    async with session.get(url) as response:
        try:
            async for chunk in response.content.iter_any():
                received += chunk
        except aiohttp.ClientPayloadError:
            return response.status, bytes(received), False
    return response.status, bytes(received), True


async def test_error_rate_gives_503_with_retry_after(catalog: Catalog) -> None:
    faults = FaultConfig(error_rate=1.0, retry_after=7)
    with running_server(catalog=catalog, workers=1, faults=faults) as base:
        async with aiohttp.ClientSession() as session:
            download = (catalog.downloads("tiny") or [])[0]
            for path in (
                "/api/export",
                "/api/export/tiny",
                f"/api/export/tiny/{download.id}",
                f"/api/export/tiny/{download.id}/data",
                "/api/nothing",
            ):
                async with session.get(base + path) as response:
                    assert response.status == 503
                    assert response.headers["Retry-After"] == "7"
                    assert "detail" in await response.json()


@pytest.mark.parametrize("cached", [False, True])
async def test_fail_rate_cuts_data_streams(catalog: Catalog, tmp_path: Path, cached: bool) -> None:
    download = (catalog.downloads("tiny") or [])[2]
    expected = b"".join(generate_body(download))
    if cached:
        (tmp_path / f"{download.id}.csv").write_bytes(expected)
    url = f"/api/export/tiny/{download.id}/data"
    with running_server(
        catalog=catalog, workers=1, cache_dir=tmp_path, faults=FaultConfig(fail_rate=1.0, seed=3)
    ) as base:
        async with aiohttp.ClientSession() as session:
            cut_points = set()
            for _ in range(5):
                status, received, complete = await read_data(session, base + url)
                assert status == 200
                assert not complete
                assert len(received) < len(expected)
                assert expected.startswith(received)
                cut_points.add(len(received))
            # The cut falls at a random place, not always the same one.
            assert len(cut_points) > 1
            async with session.get(f"{base}/api/export/tiny") as response:
                assert response.status == 200
    # A cut stream is never cached as if it were complete.
    assert os.listdir(tmp_path) == ([f"{download.id}.csv"] if cached else [])


async def test_latency_delays_every_response(catalog: Catalog) -> None:
    with running_server(catalog=catalog, workers=1, faults=FaultConfig(latency=0.3)) as base:
        async with aiohttp.ClientSession() as session:
            download = (catalog.downloads("tiny") or [])[0]
            for path in ("/api/export", f"/api/export/tiny/{download.id}/data", "/api/nothing"):
                start = time.monotonic()
                async with session.get(base + path) as response:
                    body = await response.read()
                assert time.monotonic() - start >= 0.3
            assert body == b'{"detail":"Not Found"}'
            async with session.get(f"{base}/api/export/tiny/{download.id}/data") as response:
                assert await response.read() == b"".join(generate_body(download))


Trace = dict[tuple[str, int], tuple[int, bytes, bool]]


async def fault_trace(catalog: Catalog, seed: int, *, concurrent: bool = False) -> Trace:
    """What the k-th request of each path got: its status, body, and whether it ended properly.

    Sequentially, the paths take turns. Concurrently, every path has its own task (started in
    the reverse order) that sends that path's requests one after another, while the other paths'
    requests run at the same time.
    """
    downloads = catalog.downloads("tiny") or []
    paths = ["/api/export", "/api/export/tiny"] + [
        f"/api/export/tiny/{d.id}{suffix}" for d in downloads for suffix in ("", "/data")
    ]
    faults = FaultConfig(fail_rate=0.5, error_rate=0.3, seed=seed)
    trace: Trace = {}
    with running_server(catalog=catalog, workers=2, faults=faults) as base:
        async with aiohttp.ClientSession() as session:

            async def requests(path: str, numbers: range) -> None:
                for number in numbers:
                    trace[path, number] = await read_data(session, base + path)

            if concurrent:
                await asyncio.gather(*(requests(path, range(4)) for path in reversed(paths)))
            else:
                for number in range(4):
                    for path in paths:
                        await requests(path, range(number, number + 1))
    return trace


async def test_a_seed_replays_the_same_faults(catalog: Catalog) -> None:
    first = await fault_trace(catalog, seed=11)
    assert first == await fault_trace(catalog, seed=11)
    assert first != await fault_trace(catalog, seed=12)
    outcomes = list(first.values())
    assert any(status == 503 for status, _, _ in outcomes)
    assert any(not complete for *_, complete in outcomes)
    assert any(status == 200 and complete for status, _, complete in outcomes)


async def test_a_seed_replays_the_same_faults_whatever_the_interleaving(
    catalog: Catalog,
) -> None:
    sequential = await fault_trace(catalog, seed=5)
    assert await fault_trace(catalog, seed=5, concurrent=True) == sequential
    data = [outcome for (path, _), outcome in sequential.items() if path.endswith("/data")]
    assert any(status == 503 for status, _, _ in data)
    assert any(status == 200 and not complete for status, _, complete in data)


def test_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="fail_rate"):
        FaultConfig(fail_rate=1.5)
    with pytest.raises(ValueError, match="error_rate"):
        FaultConfig(error_rate=-0.1)
    with pytest.raises(ValueError, match="fail_rate"):
        FaultConfig(fail_rate=float("nan"))


@pytest.mark.parametrize("latency", [-1.0, float("inf"), float("nan")])
def test_the_latency_is_finite_and_not_negative(latency: float) -> None:
    with pytest.raises(ValueError, match="latency must be finite and not negative"):
        FaultConfig(latency=latency)


@pytest.mark.parametrize("retry_after", [-1, 2**31 + 1])
def test_retry_after_is_a_number_of_seconds_http_can_carry(retry_after: int) -> None:
    with pytest.raises(ValueError, match=f"retry_after must be from 0 to {2**31}"):
        FaultConfig(retry_after=retry_after)
    assert FaultConfig(retry_after=2**31).retry_after == 2**31
