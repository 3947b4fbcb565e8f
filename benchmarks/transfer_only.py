"""Fetch every download of an export and throw the bytes away: the transfer-only baseline.

    uv run python benchmarks/transfer_only.py EXPORT -s URL [-c N] [--count-lines]

Does what the client does on the network and nothing else: the same discovery through
`ExportAPI` (export list, download ids, every download's metadata), the very aiohttp session
`ExportClient` opens (`make_session`), the same number of downloads in flight (a semaphore),
and then reads each body and only counts its bytes. A body cut short is an error, as aiohttp
raises on a chunked stream without its terminator (or a short `Content-Length`); with
`--count-lines` the bodies' line ends are counted too and must be one more than the rows the
metadata announces. That count is a C-speed scan of every byte, `bytes.count`, which costs about
as much CPU as the client's counting kernel: the timed baseline runs without it (the scripts
check once, when they warm a cache, and compare the client's bytes with the baseline's). No
retries: a broken or short download is an error (exit 1), since a baseline that silently
fetched less would flatter the client. Prints one JSON object on stdout: downloads, rows,
bytes, seconds.
`benchmarks/concurrency.py` and `benchmarks/end_to_end.py` run it side by side with the client.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson

from export_client._defaults import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT
from export_client._http import ExportAPI, make_session
from export_client._metadata import DownloadInfo


async def _drain(
    api: ExportAPI, export_id: str, info: DownloadInfo, *, count_lines: bool
) -> tuple[int, int]:
    """Reads one body to its end; returns its bytes and (with `count_lines`) its line ends."""
    size = 0
    newlines = 0
    async with api.open_data(export_id, info.id) as stream:
        if count_lines:
            async for chunk in stream.chunks():
                size += len(chunk)
                newlines += chunk.count(b"\n")
        else:
            async for chunk in stream.chunks():
                size += len(chunk)
    if size == 0:
        raise RuntimeError(f"download {info.id} of {export_id!r} had an empty body")
    # The header line plus one line per row announced by the metadata.
    if count_lines and newlines != info.rows + 1:
        raise RuntimeError(
            f"download {info.id} of {export_id!r} had {newlines - 1:,} rows, "
            f"its metadata announced {info.rows:,}"
        )
    return size, newlines


async def fetch_all(
    server: str,
    export_id: str,
    *,
    concurrency: int,
    idle_timeout: float = DEFAULT_TIMEOUT,
    count_lines: bool = False,
) -> dict[str, str | float | int | bool]:
    """Fetches and discards every download of an export; returns what was transferred."""
    started = time.perf_counter()
    async with make_session(concurrency=concurrency, timeout=idle_timeout) as session:
        api = ExportAPI(session, server)
        known = await api.export_ids()
        if export_id not in known:
            raise RuntimeError(f"the server has no export {export_id!r} (it has {known})")
        ids = await api.download_ids(export_id)
        slots = asyncio.Semaphore(concurrency)

        async def info(download_id: str) -> DownloadInfo:
            async with slots:
                return await api.download_info(export_id, download_id)

        async def body(download: DownloadInfo) -> tuple[int, int]:
            async with slots:
                return await _drain(api, export_id, download, count_lines=count_lines)

        downloads = await asyncio.gather(*(info(i) for i in ids))
        sizes = await asyncio.gather(*(body(d) for d in downloads))
    return {
        "export_id": export_id,
        "downloads": len(downloads),
        "rows": sum(d.rows for d in downloads),
        "bytes": sum(size for size, _ in sizes),
        "seconds": time.perf_counter() - started,
        "lines_counted": count_lines,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("export_id", help="the export to fetch")
    parser.add_argument("-s", "--server", default="http://localhost:8000", help="server base URL")
    parser.add_argument(
        "-c", "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="downloads in flight"
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="idle seconds")
    parser.add_argument(
        "--count-lines", action="store_true", help="check every body's rows by its line ends"
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    try:
        result = asyncio.run(
            fetch_all(
                args.server,
                args.export_id,
                concurrency=args.concurrency,
                idle_timeout=args.timeout,
                count_lines=args.count_lines,
            )
        )
    except Exception as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
