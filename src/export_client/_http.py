"""The export API over HTTP: requests, status codes and raw body bytes, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from ._exceptions import ServerResponseError, UnknownExportError
from ._models import DownloadInfo


class TransientError(Exception):
    """A failure worth retrying: a 5xx or 429, a broken, cut or stalled connection."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ConnectError(TransientError):
    """No connection could be made at all."""


_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    """Seconds from a `Retry-After` header; the HTTP-date form is rare enough to ignore."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)


def _segment(value: str) -> str:
    return quote(value, safe="")


class ExportAPI:
    """The four endpoints of the export API, on an open `aiohttp.ClientSession`."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")

    def url(self, *segments: str) -> str:
        """The URL of an API path, each segment percent-encoded."""
        return "/".join([self.base_url, "api", "export", *map(_segment, segments)])

    async def export_ids(self) -> list[str]:
        """The ids of the exports the server offers."""
        data = await self._get_json(self.url())
        ids = data.get("export_ids") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ServerResponseError(f"{self.url()} did not list export ids: {data!r:.200}")
        return ids

    async def download_ids(self, export_id: str) -> list[str]:
        """The ids of an export's downloads, in the server's order."""
        url = self.url(export_id)
        data = await self._get_json(url, missing=lambda: UnknownExportError(export_id, []))
        ids = data.get("download_ids") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ServerResponseError(f"{url} did not list download ids: {data!r:.200}")
        return ids

    async def download_info(self, export_id: str, download_id: str) -> DownloadInfo:
        """A download's metadata."""
        url = self.url(export_id, download_id)
        data = await self._get_json(url)
        try:
            info = DownloadInfo(
                id=str(data["id"]),
                rows=int(data["rows"]),
                patients=tuple(map(str, data["patients"])),
                event_types=tuple(map(str, data["event_types"])),
                start_time=str(data["start_time"]),
                end_time=str(data["end_time"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ServerResponseError(
                f"{url} returned metadata the client cannot read "
                f"({type(error).__name__}: {error}): {data!r:.200}"
            ) from None
        if info.id != download_id:
            raise ServerResponseError(f"{url} returned the metadata of download {info.id!r}.")
        if info.rows < 0:
            raise ServerResponseError(f"{url} announced a negative row count ({info.rows}).")
        return info

    @asynccontextmanager
    async def open_data(self, export_id: str, download_id: str) -> AsyncIterator[DataStream]:
        """Opens a download's CSV body; the stream yields its bytes as they arrive."""
        url = self.url(export_id, download_id, "data")
        async with self._request(url) as response:
            yield DataStream(url, response)

    async def _get_json(self, url: str, *, missing: Any = None) -> Any:
        async with self._request(url, missing=missing) as response:
            try:
                body = await response.read()
            except (TimeoutError, aiohttp.ClientError) as error:
                raise TransientError(f"reading {url} failed: {_describe(error)}") from error
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ServerResponseError(f"{url} did not return JSON: {body[:200]!r}") from None
        if not isinstance(document, dict) or "data" not in document:
            raise ServerResponseError(f"{url} returned no 'data' member: {body[:200]!r}")
        return document["data"]

    @asynccontextmanager
    async def _request(
        self, url: str, *, missing: Any = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    raise await _status_error(url, response, missing)
                yield response
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            raise ConnectError(_describe(error)) from error
        except (TimeoutError, aiohttp.ClientError) as error:
            raise TransientError(f"GET {url} failed: {_describe(error)}") from error


class DataStream:
    """The bytes of one download's body, in whatever pieces the network delivers."""

    def __init__(self, url: str, response: aiohttp.ClientResponse) -> None:
        self.url = url
        self._response = response

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes; a cut, stalled or broken stream raises `TransientError`."""
        content = self._response.content
        try:
            while chunk := await content.readany():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as error:
            raise TransientError(f"the stream from {self.url} broke: {_describe(error)}") from error


async def _status_error(url: str, response: aiohttp.ClientResponse, missing: Any) -> Exception:
    if response.status in _RETRYABLE_STATUSES:
        return TransientError(
            f"GET {url} answered {response.status} {response.reason or ''}".rstrip(),
            retry_after=_retry_after(response),
        )
    if response.status == 404 and missing is not None:
        return missing()  # type: ignore[no-any-return]
    try:
        detail = (await response.read())[:200].decode("utf-8", "replace")
    except (TimeoutError, aiohttp.ClientError):
        detail = ""
    return ServerResponseError(f"GET {url} answered {response.status}: {detail}".rstrip(": "))


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
