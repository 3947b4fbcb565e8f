"""The export API over HTTP: requests, status codes and raw body bytes, nothing else."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from ._defaults import MAX_JSON_BYTES, READ_BUFFER_BYTES
from ._exceptions import ServerResponseError, UnknownExportError
from ._metadata import DownloadInfo
from ._rate import RateLimit
from ._retry import Retryable
from ._source import Unreachable

__all__ = ["DataStream", "ExportAPI", "check_server_url", "make_session"]

T = TypeVar("T")

_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# What is read of an error response's body, for its message.
_ERROR_DETAIL_BYTES = 200


def check_server_url(url: str) -> None:
    """Raises ValueError unless `url` is an export server's base URL.

    That is http or https, a host, a port from 1 to 65535 if any, and no query, fragment or
    credentials; a path prefix is allowed (a server behind a proxy).
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError if out of range or not a number
    except ValueError as error:
        raise ValueError(f"{url!r} is not a valid URL ({error})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    if port == 0:
        raise ValueError(f"{url!r} has port 0; a server's port is 1 to 65535")
    if parts.query or parts.fragment or url.rstrip("/").endswith(("?", "#")):
        raise ValueError(f"{url!r} has a query or fragment; give the server's base URL only")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r} holds credentials, which the export API does not use")


def make_session(*, concurrency: int, timeout: float) -> aiohttp.ClientSession:
    """The HTTP session the client streams with (the transfer-only benchmark uses it too)."""
    return aiohttp.ClientSession(
        # Connect and idle-read bounds only: a healthy stream of any length
        # must never time out, a stalled one must.
        timeout=aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout),
        connector=aiohttp.TCPConnector(limit=concurrency + 4),
        read_bufsize=READ_BUFFER_BYTES,
    )


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
    # Percent-encoding keeps "/" inside a segment, but "." and ".." are removed or climb up
    # when the URL is normalized (even as %2e), which would leave the API's paths.
    if not is_safe_id(value):
        raise ValueError(f"{value!r} is not an id that can be a URL path segment")
    return quote(value, safe="")


def is_safe_id(value: str) -> bool:
    """Whether `value` can stand as one path segment of an API URL."""
    return value not in ("", ".", "..")


class ExportAPI:
    """The four endpoints of the export API over HTTP, on an open `aiohttp.ClientSession`."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")

    def url(self, *segments: str) -> str:
        """The URL of an API path, each segment percent-encoded."""
        return "/".join([self.base_url, "api", "export", *map(_segment, segments)])

    async def export_ids(self) -> list[str]:
        """The ids of the exports the server offers."""
        url = self.url()
        return _ids(url, await self._get_json(url), "export_ids", "an export")

    async def download_ids(self, export_id: str) -> list[str]:
        """The ids of an export's downloads, in the server's order."""
        url = self.url(export_id)
        data = await self._get_json(url, missing=lambda: UnknownExportError(export_id, []))
        return _ids(url, data, "download_ids", "a download")

    async def download_info(self, export_id: str, download_id: str) -> DownloadInfo:
        """A download's metadata."""
        url = self.url(export_id, download_id)
        data = await self._get_json(url)
        if not isinstance(data, dict):
            raise ServerResponseError(
                f"{url} returned metadata that is not an object: {data!r:.200}"
            )
        info = DownloadInfo(
            id=_member(url, data, "id", str),
            rows=_member(url, data, "rows", int),
            patients=tuple(_strings(url, data, "patients")),
            event_types=tuple(_strings(url, data, "event_types")),
            start_time=_member(url, data, "start_time", str),
            end_time=_member(url, data, "end_time", str),
        )
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
            too_big = ServerResponseError(
                f"{url} returned more than {MAX_JSON_BYTES:,} bytes of JSON; "
                "the API's documents are a few hundred bytes."
            )
            if (response.content_length or 0) > MAX_JSON_BYTES:
                raise too_big
            body = bytearray()
            try:
                async for chunk in response.content.iter_any():
                    body += chunk
                    if len(body) > MAX_JSON_BYTES:
                        raise too_big
            except (TimeoutError, aiohttp.ClientError) as error:
                raise Retryable(f"reading {url} failed: {_describe(error)}") from error
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ServerResponseError(f"{url} did not return JSON: {bytes(body[:200])!r}") from None
        if not isinstance(document, dict) or "data" not in document:
            raise ServerResponseError(f"{url} returned no 'data' member: {bytes(body[:200])!r}")
        return document["data"]

    @asynccontextmanager
    async def _request(
        self, url: str, *, missing: Any = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            # The API has no redirects: following one could count another server's data.
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise await _status_error(url, response, missing)
                yield response
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            raise Unreachable(_describe(error)) from error
        except (TimeoutError, aiohttp.ClientError) as error:
            raise Retryable(f"GET {url} failed: {_describe(error)}") from error


def _ids(url: str, data: Any, name: str, what: str) -> list[str]:
    ids = data.get(name) if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ServerResponseError(f"{url} did not list {name.replace('_', ' ')}: {data!r:.200}")
    for value in ids:
        if not is_safe_id(value):
            raise ServerResponseError(
                f"{url} lists {what} id {value!r}, which cannot be a URL path segment."
            )
    return ids


def _member(url: str, data: dict[str, Any], name: str, kind: type[T]) -> T:
    value = data.get(name)
    # bool is an int to Python, never to the API.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ServerResponseError(
            f"{url} returned metadata whose {name!r} is not a JSON "
            f"{'integer' if kind is int else 'string'}: {value!r:.100}"
        )
    return value


def _strings(url: str, data: dict[str, Any], name: str) -> list[str]:
    values = data.get(name)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ServerResponseError(
            f"{url} returned metadata whose {name!r} is not a list of strings: {values!r:.100}"
        )
    return values


class DataStream:
    """The bytes of one download's body, in whatever pieces the network delivers."""

    def __init__(self, url: str, response: aiohttp.ClientResponse) -> None:
        self.url = url
        self._response = response

    async def chunks(
        self, *, speed_limit: float = 0.0, speed_time: float = 30.0, limit: RateLimit | None = None
    ) -> AsyncIterator[bytes]:
        """The body's bytes; a cut, stalled, broken or too slow stream raises `Retryable`.

        Too slow is below `speed_limit` bytes per second over `speed_time` seconds, as curl's
        --speed-limit and --speed-time: judged whenever bytes arrive, so a stream that stops
        altogether is left to the session's read timeout. With `limit`, each read waits for
        the rate limit, and the time waited does not count against the server's speed.
        """
        content = self._response.content
        window_start = time.monotonic()
        window_bytes = 0
        try:
            while chunk := await content.readany():
                if limit is not None:
                    window_start += await limit.take(len(chunk))
                if speed_limit:
                    window_bytes += len(chunk)
                    now = time.monotonic()
                    elapsed = now - window_start
                    if elapsed >= speed_time:
                        if window_bytes < speed_limit * elapsed:
                            raise Retryable(
                                f"the stream from {self.url} was too slow: "
                                f"{window_bytes / elapsed:,.0f} bytes/s over {elapsed:.0f} s, "
                                f"below the floor of {speed_limit:,.0f} bytes/s"
                            )
                        window_start = now
                        window_bytes = 0
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as error:
            raise Retryable(f"the stream from {self.url} broke: {_describe(error)}") from error


async def _status_error(url: str, response: aiohttp.ClientResponse, missing: Any) -> Exception:
    if response.status in _RETRYABLE_STATUSES:
        return Retryable(
            f"GET {url} answered {response.status} {response.reason or ''}".rstrip(),
            retry_after=_retry_after(response),
        )
    if 300 <= response.status < 400:
        location = response.headers.get("Location", "nowhere")
        return ServerResponseError(
            f"GET {url} answered {response.status}, a redirect to {location!r:.200}; the export "
            "API has no redirects, and the client does not follow them."
        )
    if response.status == 404 and missing is not None:
        return missing()  # type: ignore[no-any-return]
    try:
        detail = (await response.content.read(_ERROR_DETAIL_BYTES)).decode("utf-8", "replace")
    except (TimeoutError, aiohttp.ClientError):
        detail = ""
    return ServerResponseError(f"GET {url} answered {response.status}: {detail}".rstrip(": "))


def _describe(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
