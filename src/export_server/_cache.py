"""The disk cache of generated bodies: complete bodies only, written best effort."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import uuid
from pathlib import Path
from typing import BinaryIO, Self

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from ._exceptions import CacheDirectoryError

__all__ = ["CacheWriter", "DiskCache"]

logger = logging.getLogger("export_server.cache")

_WRITE_BUFFER = 1 << 20
_TOKEN_BYTES = 8
# Exactly the names `DiskCache.writer` gives its temporary files, and nothing else.
_TEMPORARY_NAME = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    rf"\.csv\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp"
)


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


class DiskCache:
    """Complete bodies of downloads, one `<uuid>.csv` file each, in a directory.

    Names are built from validated `uuid.UUID` values only, never from request text. A body is
    written to `<uuid>.csv.<random>.tmp`, synced, and renamed only once it is complete, so a file
    with the final name is always a whole body.

    The cache is best effort: once the directory is set up, failing to read or write it costs
    a warning in the log, and the body is generated and served as if there were no cache.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, download_id: uuid.UUID) -> Path:
        """Where the complete body of a download is (or will be) cached."""
        return self.directory / f"{download_id}.csv"

    def prepare(self) -> None:
        """Create the directory and delete leftover temporaries; raises CacheDirectoryError."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.remove_temporaries()
        except OSError as exc:
            raise CacheDirectoryError(self.directory, _reason(exc)) from None

    def remove_temporaries(self) -> None:
        """Delete leftover temporary files of bodies whose generation never completed.

        Only names that the cache itself makes are touched: any other file is left alone.
        """
        for path in self.directory.glob("*.tmp"):
            if _TEMPORARY_NAME.fullmatch(path.name):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    async def open_cached(self, download_id: uuid.UUID) -> BinaryIO | None:
        """The cached body of a download, open for reading; None if there is none to read."""
        path = self.path(download_id)
        try:
            return await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("Cannot read the cached body %s, generating it: %s", path, exc)
            return None

    async def writer(self, download_id: uuid.UUID) -> CacheWriter | None:
        """Start caching the body of a download; None if the cache cannot take it (logged)."""
        final = self.path(download_id)
        temporary = final.with_name(f"{final.name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp")
        try:
            file = await aiofiles.open(temporary, "wb")
        except OSError as exc:
            logger.warning("Not caching %s: %s", final, exc)
            return None
        return CacheWriter(temporary, final, file)


class CacheWriter:
    """One body being written to the cache; `commit` publishes it, `discard` drops it.

    Best effort: the first error (a full disk, a permission, the temporary file removed by
    someone) logs one warning and drops the file; later calls then do nothing.
    """

    def __init__(self, temporary: Path, final: Path, file: AsyncBufferedIOBase) -> None:
        self._temporary = temporary
        self._final = final
        self._file: AsyncBufferedIOBase | None = file
        self._pending: list[bytes] = []
        self._pending_size = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.discard()

    async def write(self, chunk: bytes) -> None:
        """Append a chunk of the body."""
        if self._file is None:
            return
        # Batch small chunks so each trip to aiofiles' thread moves about a MiB.
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= _WRITE_BUFFER:
            try:
                await self._flush(self._file)
            except OSError as exc:
                await self._fail(exc)

    async def commit(self) -> None:
        """Publish the complete body under its final name, synced to disk first."""
        file = self._file
        if file is None:
            return
        try:
            await self._flush(file)
            await file.flush()
            await asyncio.to_thread(os.fsync, file.fileno())
            await file.close()
            await asyncio.to_thread(_publish, self._temporary, self._final)
        except OSError as exc:
            await self._fail(exc)
            return
        self._file = None

    async def discard(self) -> None:
        """Drop an incomplete body (nothing happens after `commit`)."""
        file, self._file = self._file, None
        self._pending.clear()
        if file is None:
            return
        with contextlib.suppress(OSError):
            await file.close()
        with contextlib.suppress(OSError):
            self._temporary.unlink(missing_ok=True)

    async def _fail(self, exc: OSError) -> None:
        logger.warning("Not caching %s: %s", self._final, exc)
        await self.discard()

    async def _flush(self, file: AsyncBufferedIOBase) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            await file.write(data)


def _publish(temporary: Path, final: Path) -> None:
    os.replace(temporary, final)
    # Sync the directory too, so that the rename survives a crash; where a file system cannot
    # sync a directory, the body is whole anyway, only perhaps not there after a crash.
    with contextlib.suppress(OSError):
        directory = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
