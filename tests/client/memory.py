"""An export API in memory: an `ExportSource` for tests that need no network at all."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from export_client import DownloadInfo, Retryable, UnknownExportError
from export_client._rate import RateLimit


@dataclass
class MemoryStream:
    body: bytes
    chunk_size: int

    async def chunks(
        self, *, speed_limit: float, speed_time: float, limit: RateLimit | None = None
    ) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.chunk_size):
            chunk = self.body[start : start + self.chunk_size]
            if limit is not None:
                await limit.take(len(chunk))
            yield chunk


@dataclass
class MemorySource:
    """One export, `demo`, whose downloads are bodies in memory; `failures` per download id
    are bodies served (in order) before the real one, each then failing as `Retryable`."""

    bodies: dict[str, bytes]
    chunk_size: int = 1000
    failures: dict[str, Sequence[bytes]] = field(default_factory=dict)
    opened: list[str] = field(default_factory=list)

    async def export_ids(self) -> list[str]:
        return ["demo"]

    async def download_ids(self, export_id: str) -> list[str]:
        if export_id != "demo":
            raise UnknownExportError(export_id, ["demo"])
        return list(self.bodies)

    async def download_info(self, export_id: str, download_id: str) -> DownloadInfo:
        rows = self.bodies[download_id].count(b"\n") - 1
        return DownloadInfo(download_id, rows, ("P001", "P002"), ("bp_sys", "bp_dia"), "", "")

    @asynccontextmanager
    async def open_data(self, export_id: str, download_id: str) -> AsyncIterator[MemoryStream]:
        attempt = self.opened.count(download_id)
        self.opened.append(download_id)
        failures = self.failures.get(download_id, ())
        if attempt < len(failures):
            yield _Broken(failures[attempt])
        else:
            yield MemoryStream(self.bodies[download_id], self.chunk_size)


class _Broken(MemoryStream):
    def __init__(self, body: bytes) -> None:
        super().__init__(body, 7)

    async def chunks(
        self, *, speed_limit: float, speed_time: float, limit: RateLimit | None = None
    ) -> AsyncIterator[bytes]:
        async for chunk in super().chunks(
            speed_limit=speed_limit, speed_time=speed_time, limit=limit
        ):
            yield chunk
        raise Retryable("the stream broke (in memory)")
