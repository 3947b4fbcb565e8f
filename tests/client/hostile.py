"""Small HTTP servers that misbehave as real servers and proxies do, for the client's tests.

aiohttp's own server always frames its responses correctly; these write raw HTTP/1.1 on a
loopback socket, so a test can send a cleanly framed but cut body, a body that never ends, a
redirect, a drip. Each runs in its own thread and event loop, so synchronous CLI tests can use
it, and closes every connection after one response.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson

Writer = asyncio.StreamWriter
Handler = Callable[[Writer], Awaitable[None]]

HEADER = b"patient_id,event_time,event_type,value\n"


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [
        f"HTTP/1.1 {status} X",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def raw(data: bytes) -> Handler:
    """Sends `data` as it is, status line and headers included."""

    async def handle(writer: Writer) -> None:
        writer.write(data)
        await writer.drain()

    return handle


def json(payload: object, *, status: int = 200) -> Handler:
    return body(orjson.dumps(payload), content_type="application/json", status=status)


def body(
    data: bytes,
    *,
    framing: str = "chunked",
    content_type: str = "text/csv; charset=utf-8",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Handler:
    """A complete, cleanly framed response: `framing` is chunked, length or close."""

    async def handle(writer: Writer) -> None:
        fields = {"Content-Type": content_type, **(headers or {})}
        if framing == "length":
            fields["Content-Length"] = str(len(data))
        elif framing == "chunked":
            fields["Transfer-Encoding"] = "chunked"
        writer.write(_head(status, fields))
        if framing == "chunked":
            for start in range(0, len(data), 1000):
                piece = data[start : start + 1000]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(data)
        await writer.drain()

    return handle


def gzipped(parts: Iterable[bytes]) -> Handler:
    """The parts, gzip-compressed, announced with Content-Encoding so the client inflates them."""
    compressor = zlib.compressobj(1, wbits=31)  # 31: the gzip format
    data = b"".join(compressor.compress(part) for part in parts) + compressor.flush()
    return body(data, framing="length", headers={"Content-Encoding": "gzip"})


def endless(prefix: bytes, unit: bytes) -> Handler:
    """`prefix`, then `unit` over and over until the client goes away."""

    async def handle(writer: Writer) -> None:
        writer.write(_head(200, {"Content-Type": "text/csv", "Transfer-Encoding": "chunked"}))
        writer.write(f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n")
        piece = unit * max(1, 65536 // len(unit))
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        while True:
            writer.write(frame)
            await writer.drain()

    return handle


def drip(data: bytes, *, interval: float, prefix: int = 0) -> Handler:
    """Sends the first `prefix` bytes at once, then one byte every `interval` seconds."""

    async def handle(writer: Writer) -> None:
        writer.write(_head(200, {"Content-Type": "text/csv", "Content-Length": str(len(data))}))
        writer.write(data[:prefix])
        for index in range(prefix, len(data)):
            await writer.drain()
            await asyncio.sleep(interval)
            writer.write(data[index : index + 1])
        await writer.drain()

    return handle


def redirect(location: str, *, status: int = 301) -> Handler:
    return body(b"", framing="length", status=status, headers={"Location": location})


@dataclass
class HostileServer:
    """A loopback server answering paths as a test scripts them; 404 for anything else.

    A path's value is one handler, or a list of them, used one per request (the last one
    again once the list is used up), so that attempts can differ.
    """

    routes: dict[str, Handler | Sequence[Handler]]
    url: str = ""
    requests: list[str] = field(default_factory=list)

    async def _serve(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.requests.append(path)
            handlers = self.routes.get(path)
            if handlers is None:
                handler = json({"detail": "Not Found"}, status=404)
            elif isinstance(handlers, Sequence):
                handler = handlers[min(self.requests.count(path), len(handlers)) - 1]
            else:
                handler = handlers
            await handler(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away, as it may
        finally:
            writer.close()


def api(
    downloads: dict[str, tuple[int, Handler | Sequence[Handler]]],
    *,
    export_id: str = "demo",
    export_ids: list[str] | None = None,
) -> dict[str, Handler | Sequence[Handler]]:
    """The routes of an export API: `downloads` maps an id to its announced rows and body."""
    base = "/api/export"
    routes: dict[str, Handler | Sequence[Handler]] = {
        base: json({"data": {"export_ids": export_ids or [export_id]}}),
        f"{base}/{export_id}": json({"data": {"id": export_id, "download_ids": list(downloads)}}),
    }
    for download_id, (rows, data) in downloads.items():
        routes[f"{base}/{export_id}/{download_id}"] = json({"data": metadata(download_id, rows)})
        routes[f"{base}/{export_id}/{download_id}/data"] = data
    return routes


def metadata(download_id: str, rows: object) -> dict[str, object]:
    return {
        "id": download_id,
        "rows": rows,
        "event_types": ["bp_sys", "bp_dia"],
        "patients": ["P001", "P002"],
        "start_time": "2025-08-26T00:00:00",
        "end_time": "2025-08-26T00:01:00",
    }


def rows(count: int, *, start: int = 0) -> bytes:
    """`count` well-formed rows of the reference format."""
    types = (b"bp_sys", b"bp_dia")
    return b"".join(
        b"P00%d,2025-08-26T00:00:%02dZ,%s,%d\n" % (i % 2 + 1, i % 60, types[i % 3 % 2], 60 + i % 50)
        for i in range(start, start + count)
    )


@contextmanager
def hostile_server(
    routes: dict[str, Handler | Sequence[Handler]], *, port: int = 0
) -> Iterator[HostileServer]:
    """Runs a `HostileServer` in a thread of its own until the block ends (`port` 0: any)."""
    server = HostileServer(routes)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        listener = await asyncio.start_server(server._serve, "127.0.0.1", port)
        server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        ready.set()
        async with listener:
            await stop.wait()
        # Handlers that would write for ever end with their connections.
        handlers = asyncio.all_tasks() - {asyncio.current_task()}
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
