"""The disk cache of generated bodies, and serving a cached body with sendfile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import uuid
from pathlib import Path
from typing import Self

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedIOBase

__all__ = ["CacheWriter", "DiskCache", "sendfile_chunked"]

_WRITE_BUFFER = 1 << 20


class DiskCache:
    """Complete bodies of downloads, one `<uuid>.csv` file each, in a directory.

    Names are built from validated `uuid.UUID` values only, never from request text. A body is
    written to `<uuid>.csv.<random>.tmp` and renamed only once it is complete, so a file with the
    final name is always a whole body.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, download_id: uuid.UUID) -> Path:
        """Where the complete body of a download is (or will be) cached."""
        return self.directory / f"{download_id}.csv"

    def cached(self, download_id: uuid.UUID) -> Path | None:
        """The cached body of a download, or None if it has not been cached yet."""
        path = self.path(download_id)
        return path if path.is_file() else None

    def remove_temporaries(self) -> None:
        """Delete leftover temporary files of bodies whose generation never completed."""
        for path in self.directory.glob("*.csv.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def writer(self, download_id: uuid.UUID) -> CacheWriter:
        """Start caching the body of a download."""
        final = self.path(download_id)
        temporary = final.with_name(f"{final.name}.{secrets.token_hex(8)}.tmp")
        return CacheWriter(temporary, final, await aiofiles.open(temporary, "wb"))


class CacheWriter:
    """One body being written to the cache; `commit` publishes it, `discard` drops it."""

    def __init__(self, temporary: Path, final: Path, file: AsyncBufferedIOBase) -> None:
        self._temporary = temporary
        self._final = final
        self._file = file
        self._pending: list[bytes] = []
        self._pending_size = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.discard()

    async def write(self, chunk: bytes) -> None:
        """Append a chunk of the body."""
        # Batch small chunks so each trip to aiofiles' thread moves about a MiB.
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= _WRITE_BUFFER:
            await self._flush()

    async def commit(self) -> None:
        """Publish the complete body under its final name."""
        await self._flush()
        await self._file.close()
        os.replace(self._temporary, self._final)

    async def discard(self) -> None:
        """Drop an incomplete body (nothing happens after `commit`)."""
        if not self._file.closed:
            await self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._temporary.unlink()

    async def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            await self._file.write(data)


async def sendfile_chunked(
    transport: asyncio.Transport, path: Path, *, limit: int | None = None, segment: int = 4 << 20
) -> bool:
    """Send a file as HTTP chunks of `segment` bytes with `loop.sendfile`.

    The response headers must already be on the transport; the caller sends the terminating
    chunk. With `limit`, stop after that many body bytes, possibly mid-chunk. Returns whether the
    whole file was sent.
    """
    loop = asyncio.get_running_loop()
    file = await asyncio.to_thread(path.open, "rb")
    try:
        size = os.fstat(file.fileno()).st_size
        end = size if limit is None else min(size, limit)
        offset = 0
        while offset < size:
            if transport.is_closing():
                raise ConnectionResetError("The client went away.")
            count = min(segment, size - offset)
            transport.write(f"{count:x}\r\n".encode())
            sent = min(count, end - offset)
            if sent:
                await loop.sendfile(transport, file, offset, sent)
            offset += sent
            if sent < count:
                return False
            transport.write(b"\r\n")
        return True
    finally:
        await asyncio.to_thread(file.close)
