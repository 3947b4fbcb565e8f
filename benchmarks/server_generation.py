"""Benchmark the mock server's body generation: in process, over HTTP on 1 and 2 streams, cached.

    uv run python benchmarks/server_generation.py [--rows 300000] [--repeats 5]
        [--workers N] [--out-dir benchmarks/results]

Three measurements, each `--repeats` times, reported as median (min..max):

1. In process, single-threaded: `generate_body` over the first `--rows` rows of the first
   download of `small`, alternating with a plain implementation of the reference spec's steps
   (written below with `random.Random`, `datetime + timedelta` and `isoformat()`, the reference
   server's way) over the same rows; rows/s of both and their ratio. Both must give the same
   bytes, or the benchmark stops.
2. Over HTTP: a server (`python -m export_server --workers N` on a free loopback port, started
   with `export_server.start_server_process`) streams whole downloads
   of `small`, download 0 alone (1 stream) alternating with downloads 0 and 1 at once
   (2 streams); rows/s of each and the ratio 2-stream/1-stream. Download 1 has more rows than
   download 0, so the 2-stream run ends on one stream alone: the ideal ratio, with perfect
   scaling, is (rows 0 + rows 1) / rows 1, about 1.75, not 2.
3. Cached: a server with a temporary `--cache-dir`, filled by one fetch of download 0, then
   repeated whole fetches of it served from disk; MB/s and rows/s, and the SHA-256 of what the
   cache serves against the spec's sum.

The timed HTTP client is aiohttp, in this process, one connection per stream, reading with
`readany()` and dropping the bytes, not `curl -o /dev/null`: it is not the bottleneck. Measured
here on the 713,429 rows of small[0], aiohttp takes about 0.065 CPU s per generated body against
0.03 for curl, a few per cent of one core while the server generates for about a second; and
from the cache, where a body comes in 15 to 25 ms, curl's process start-up would be a large part
of the time and aiohttp's session is made outside it. The client's CPU seconds are recorded with
every run to show that they stay small. The untimed check fetches use curl, an independent
client: the first fetch of each body is hashed (SHA-256) and its rows counted, and every timed
stream must answer 200 with that many bytes.

Writes benchmarks/results/server_generation.json (settings, machine, every run, the summary)
and benchmarks/results/server_generation.md (the figures for the README), and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from _bench import BenchmarkError, Spread, running_server, tree_cpu_seconds, write_atomically
from _bench import machine as shared_machine
from rich.console import Console
from rich.table import Table

from export_server import CSV_HEADER, REFERENCE_CATALOG, DownloadSpec, ServerProcess, generate_body
from export_server._generate import EVENT_VALUE_PARAMS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXPORT = "small"
# The spec's SHA-256 of the whole body of small's first download.
SMALL_FIRST_SHA256 = "2438ba954016ef15be34d7dcb40de51bab5d0515a2b2acba3ba72b9adf63605f"
SERVER_START_SECONDS = 60.0
FETCH_MAX_SECONDS = 600
READ_SIZE = 1 << 20

# Progress goes to stderr, so stdout carries only the table.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160, highlight=False)


@dataclass
class GenerationRun:
    """One timed in-process generation of the measured rows."""

    variant: str
    repeat: int
    wall_seconds: float
    cpu_seconds: float
    bytes: int


def _timed(produce: Callable[[], Iterator[bytes]]) -> tuple[float, float, list[bytes]]:
    wall, cpu = time.perf_counter(), time.process_time()
    chunks = list(produce())
    return time.perf_counter() - wall, time.process_time() - cpu, chunks


def plain_body(download: DownloadSpec, rows: int) -> Iterator[bytes]:
    """The first `rows` rows generated as the spec words it, step by step: the reference's way.

    The header first, then chunks of about 32 KiB of whole lines, as the reference sends them.
    """
    yield CSV_HEADER
    rng = random.Random(download.id.bytes)
    t = download.start_time
    step_seconds = download.step.total_seconds()
    lines: list[str] = []
    size = 0
    for _ in range(rows):
        patient_id = rng.choice(download.patients)
        event_time = t + timedelta(seconds=rng.uniform(0, step_seconds))
        event_type = rng.choice(download.event_types)
        mean, sd, lo, hi = EVENT_VALUE_PARAMS[event_type]
        value = max(lo, min(hi, int(rng.gauss(mean, sd))))
        line = f"{patient_id},{event_time.isoformat()}Z,{event_type},{value}\n"
        lines.append(line)
        size += len(line)
        t = t + download.step
        if size >= 32768:
            yield "".join(lines).encode()
            lines.clear()
            size = 0
    if lines:
        yield "".join(lines).encode()


def measure_generation(download: DownloadSpec, rows: int, repeats: int) -> list[GenerationRun]:
    """Alternating timed runs of `generate_body` and the plain implementation over `rows` rows."""
    # The rows of a download come from one random stream in order, so a download cut to its
    # first `rows` rows generates exactly those rows of the whole one.
    prefix = dataclasses.replace(download, rows=rows)
    variants: dict[str, Callable[[], Iterator[bytes]]] = {
        "generate_body": lambda: generate_body(prefix),
        "plain": lambda: plain_body(download, rows),
    }
    # An untimed first run of each: the check, and the one-off set-up (generate_body's clock
    # strings) kept out of the timings.
    bodies = {name: b"".join(produce()) for name, produce in variants.items()}
    if bodies["generate_body"] != bodies["plain"]:
        raise BenchmarkError(
            f"generate_body and the plain implementation differ over the first {rows:,} rows"
        )
    body = bodies["generate_body"]
    lines = body.count(b"\n")
    if lines != rows + 1:
        raise BenchmarkError(f"the body has {lines - 1:,} rows, not {rows:,}")
    if rows == download.rows and hashlib.sha256(body).hexdigest() != SMALL_FIRST_SHA256:
        raise BenchmarkError("the whole body's SHA-256 is not the spec's")
    console.print(f"in process: both give the same {len(body):,} bytes for {rows:,} rows")
    runs = []
    for repeat in range(repeats):
        for name, produce in variants.items():
            wall, cpu, chunks = _timed(produce)
            size = sum(map(len, chunks))
            if size != len(body):
                raise BenchmarkError(f"{name} gave {size:,} bytes, the check run {len(body):,}")
            runs.append(GenerationRun(name, repeat, wall, cpu, size))
            console.print(
                f"in process #{repeat + 1} {name}: {wall:.3f} s, {rows / wall:,.0f} rows/s"
            )
    return runs


def data_url(base: str, download: DownloadSpec) -> str:
    """The data URL of a download."""
    return f"{base}/api/export/{download.export_id}/{download.id}/data"


@dataclass
class Body:
    """What one checked fetch of a whole body gave."""

    bytes: int
    rows: int
    sha256: str


def fetch_checked(url: str) -> Body:
    """Fetch a whole body through curl into this process, hashing it and counting its rows."""
    process = subprocess.Popen(
        ["curl", "-sS", "--fail", "--max-time", str(FETCH_MAX_SECONDS), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    digest = hashlib.sha256()
    size = lines = 0
    while chunk := process.stdout.read(READ_SIZE):
        digest.update(chunk)
        size += len(chunk)
        lines += chunk.count(b"\n")
    error = process.stderr.read().decode("utf-8", "replace").strip()
    if process.wait() != 0:
        raise BenchmarkError(f"curl {url} exited with {process.returncode}: {error}")
    # The header line is not a row.
    return Body(size, lines - 1, digest.hexdigest())


@dataclass
class StreamRun:
    """One timed run of whole downloads fetched at once, one curl process each."""

    case: str
    repeat: int
    streams: int
    wall_seconds: float
    rows: int
    bytes: int
    stream_seconds: list[float]
    server_cpu_seconds: float
    client_cpu_seconds: float

    @property
    def rows_per_second(self) -> float:
        """Rows of all streams per wall second."""
        return self.rows / self.wall_seconds

    @property
    def mb_per_second(self) -> float:
        """Megabytes (10**6) of all streams per wall second."""
        return self.bytes / 1e6 / self.wall_seconds


async def _read(session: aiohttp.ClientSession, url: str) -> tuple[int, int, float]:
    """Read a whole body and drop it; its status, size and seconds."""
    started = time.perf_counter()
    size = 0
    async with session.get(url) as response:
        while chunk := await response.content.readany():
            size += len(chunk)
        return response.status, size, time.perf_counter() - started


async def _read_all(urls: list[str]) -> tuple[float, list[tuple[int, int, float]]]:
    # The session is made outside the timed part; connecting is inside, as for any client.
    timeout = aiohttp.ClientTimeout(total=FETCH_MAX_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.perf_counter()
        results = await asyncio.gather(*(_read(session, url) for url in urls))
        return time.perf_counter() - started, results


def fetch_streams(
    server: ServerProcess,
    case: str,
    repeat: int,
    downloads: Sequence[DownloadSpec],
    sizes: list[int],
) -> StreamRun:
    """Fetch whole downloads at once with aiohttp, dropping the bytes; each must be whole."""
    server_process = psutil.Process(server.process.pid)
    server_cpu = tree_cpu_seconds(server_process)
    client_cpu = time.process_time()
    try:
        wall, results = asyncio.run(_read_all([data_url(server.url, d) for d in downloads]))
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BenchmarkError(f"{case}: the fetch failed: {exc!r}") from exc
    client_cpu = time.process_time() - client_cpu
    server_cpu = tree_cpu_seconds(server_process) - server_cpu
    for (status, received, _), download, size in zip(results, downloads, sizes, strict=True):
        if status != 200 or received != size:
            raise BenchmarkError(
                f"download {download.index}: HTTP {status}, {received:,} bytes instead of {size:,}"
            )
    return StreamRun(
        case=case,
        repeat=repeat,
        streams=len(downloads),
        wall_seconds=wall,
        rows=sum(d.rows for d in downloads),
        bytes=sum(sizes),
        stream_seconds=[seconds for _, _, seconds in results],
        server_cpu_seconds=server_cpu,
        client_cpu_seconds=client_cpu,
    )


def _report(run: StreamRun) -> None:
    console.print(
        f"{run.case} #{run.repeat + 1}: {run.wall_seconds:.2f} s, {run.rows_per_second:,.0f} "
        f"rows/s, {run.mb_per_second:,.1f} MB/s, server CPU {run.server_cpu_seconds:.2f} s, "
        f"client CPU {run.client_cpu_seconds:.2f} s"
    )


def _check_body(body: Body, download: DownloadSpec, what: str) -> None:
    if body.rows != download.rows:
        raise BenchmarkError(f"{what}: {body.rows:,} rows, the metadata says {download.rows:,}")
    if download.index == 0 and body.sha256 != SMALL_FIRST_SHA256:
        raise BenchmarkError(f"{what}: SHA-256 {body.sha256}, the spec says {SMALL_FIRST_SHA256}")


def measure_streams(
    downloads: Sequence[DownloadSpec], workers: int, repeats: int
) -> tuple[list[StreamRun], list[Body]]:
    """Alternating runs of 1 stream (download 0) and 2 streams (downloads 0 and 1)."""
    runs = []
    with running_server(workers, None) as server:
        # An untimed fetch of each: the check of the bytes, and the sizes the timed runs expect.
        bodies = [fetch_checked(data_url(server.url, d)) for d in downloads]
        for body, download in zip(bodies, downloads, strict=True):
            _check_body(body, download, f"download {download.index} over HTTP")
        sizes = [body.bytes for body in bodies]
        console.print(f"HTTP: checked downloads 0 and 1 ({sizes[0]:,} and {sizes[1]:,} bytes)")
        for repeat in range(repeats):
            # Alternating, so that drift on a shared machine hits both cases alike.
            for case, count in (("1 stream", 1), ("2 streams", 2)):
                run = fetch_streams(server, case, repeat, downloads[:count], sizes[:count])
                runs.append(run)
                _report(run)
    return runs, bodies


def measure_cached(
    download: DownloadSpec, workers: int, repeats: int
) -> tuple[list[StreamRun], dict[str, Any]]:
    """Fill a temporary cache with download 0, then time whole fetches of it from the cache."""
    runs = []
    with (
        tempfile.TemporaryDirectory(prefix="server-generation-") as directory,
        running_server(workers, Path(directory)) as server,
    ):
        url = data_url(server.url, download)
        filled = fetch_checked(url)
        _check_body(filled, download, "the fetch that fills the cache")
        path = Path(directory) / f"{download.id}.csv"
        # The server commits the cache file before it ends the response; waiting a little
        # only guards against a slow rename.
        deadline = time.monotonic() + 5
        while not path.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not path.is_file():
            raise BenchmarkError(f"no cache file {path} after the first fetch")
        stat = path.stat()
        if stat.st_size != filled.bytes:
            raise BenchmarkError(
                f"the cache file has {stat.st_size:,} bytes, the body {filled.bytes:,}"
            )
        served = fetch_checked(url)
        _check_body(served, download, "the body served from the cache")
        console.print(
            f"cached: {path.name} holds {stat.st_size:,} bytes; served SHA-256 is the spec's"
        )
        for repeat in range(repeats):
            run = fetch_streams(server, "cached", repeat, [download], [filled.bytes])
            runs.append(run)
            _report(run)
        # A body generated again would have replaced the file: a new inode, a new mtime.
        after = path.stat()
        if (after.st_ino, after.st_mtime_ns) != (stat.st_ino, stat.st_mtime_ns):
            raise BenchmarkError("the cache file was rewritten: the fetches were not cached")
    check = {
        "cache_file_bytes": stat.st_size,
        "served_sha256": served.sha256,
        "spec_sha256": SMALL_FIRST_SHA256,
    }
    return runs, check


def machine() -> dict[str, Any]:
    """The machine the benchmark ran on, and the HTTP clients it used."""
    return {
        **shared_machine(),
        "aiohttp": aiohttp.__version__,
        "curl": subprocess.run(
            ["curl", "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[1],
    }


@dataclass
class Row:
    """One line of the result table."""

    measurement: str
    rows_per_second: Spread
    mb_per_second: Spread
    wall_seconds: Spread
    cpu: str
    ratio: str


def _generation_rows(runs: list[GenerationRun], rows: int) -> tuple[Row, Row, float]:
    rates: dict[str, float] = {}
    cpu_rates: dict[str, float] = {}
    result: dict[str, tuple[Spread, Spread, Spread, str]] = {}
    for name in ("generate_body", "plain"):
        chosen = [r for r in runs if r.variant == name]
        rate = Spread.of([rows / r.wall_seconds for r in chosen])
        rates[name] = rate.median
        cpu_rates[name] = statistics.median(rows / r.cpu_seconds for r in chosen)
        result[name] = (
            rate,
            Spread.of([r.bytes / 1e6 / r.wall_seconds for r in chosen]),
            Spread.of([r.wall_seconds for r in chosen]),
            f"{statistics.median(r.cpu_seconds for r in chosen):.3f} s",
        )
    ratio = rates["generate_body"] / rates["plain"]
    cpu_ratio = cpu_rates["generate_body"] / cpu_rates["plain"]
    return (
        Row(
            f"`generate_body`, in process, first {rows:,} rows of small[0]",
            *result["generate_body"],
            f"{ratio:.2f}x plain ({cpu_ratio:.2f}x by CPU time)",
        ),
        Row(
            "plain spec implementation (datetime, timedelta, isoformat), same rows",
            *result["plain"],
            "1",
        ),
        ratio,
    )


def _stream_row(runs: list[StreamRun], measurement: str, ratio: str) -> Row:
    return Row(
        measurement,
        Spread.of([r.rows_per_second for r in runs]),
        Spread.of([r.mb_per_second for r in runs]),
        Spread.of([r.wall_seconds for r in runs]),
        f"server {statistics.median(r.server_cpu_seconds for r in runs):.2f} s, "
        f"client {statistics.median(r.client_cpu_seconds for r in runs):.2f} s",
        ratio,
    )


def summarize(
    args: argparse.Namespace,
    generation: list[GenerationRun],
    streams: list[StreamRun],
    cached: list[StreamRun],
    downloads: Sequence[DownloadSpec],
) -> tuple[list[Row], dict[str, float]]:
    """The table's rows and the ratios of the medians."""
    fast, plain, generation_ratio = _generation_rows(generation, args.rows)
    one = [r for r in streams if r.streams == 1]
    two = [r for r in streams if r.streams == 2]
    stream_ratio = statistics.median(r.rows_per_second for r in two) / statistics.median(
        r.rows_per_second for r in one
    )
    # With perfect scaling both streams run at the 1-stream rate until the shorter one ends.
    ideal = (downloads[0].rows + downloads[1].rows) / max(downloads[0].rows, downloads[1].rows)
    rows = [
        fast,
        plain,
        _stream_row(one, f"HTTP, 1 stream: small[0] ({downloads[0].rows:,} rows)", "1"),
        _stream_row(
            two,
            f"HTTP, 2 streams at once: small[0] and small[1] ({downloads[1].rows:,} rows), total",
            f"{stream_ratio:.2f}x 1 stream (ideal {ideal:.2f}x)",
        ),
        _stream_row(cached, "cached: small[0] served from --cache-dir", ""),
    ]
    ratios = {
        "generate_body_over_plain": generation_ratio,
        "two_streams_over_one": stream_ratio,
        "two_streams_over_one_ideal": ideal,
    }
    return rows, ratios


def render_table(rows: list[Row], title: str) -> None:
    """The summary as a rich table on stdout."""
    table = Table(title=title)
    for header in ("measurement", "rows/s", "MB/s", "wall s", "CPU", "ratio"):
        table.add_column(header, justify="left" if header == "measurement" else "right")
    for row in rows:
        table.add_row(
            row.measurement.replace("`", ""),
            row.rows_per_second.text(",.0f"),
            row.mb_per_second.text(",.1f"),
            row.wall_seconds.text(".3f"),
            row.cpu,
            row.ratio,
        )
    # Not a terminal (a log file): wide enough that the columns are not cut.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def markdown(rows: list[Row], info: dict[str, Any], command: str, args: argparse.Namespace) -> str:
    """The figures as Markdown, ready for the README."""
    lines = [
        f"Server generation benchmark: medians (min..max) of {args.repeats} runs each.",
        "",
        f"    {command}",
        "",
        f"Machine: {info['cores']} cores, {info['memory_gb']} GB memory, "
        f"{info['implementation']} {info['python']}, {info['platform']}, {info['date']}.",
        f"HTTP: server `--workers {args.workers}`, client aiohttp {info['aiohttp']} (one",
        "connection per stream, bytes dropped); CPU is the median of the server's (main process",
        "and workers) and the client's user+system seconds per run. In-process runs are",
        "single-threaded.",
        "",
        "| measurement | rows/s | MB/s | wall s | CPU | ratio |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.measurement} | {row.rows_per_second.text(',.0f')} "
            f"| {row.mb_per_second.text(',.1f')} | {row.wall_seconds.text('.3f')} "
            f"| {row.cpu} | {row.ratio} |"
        )
    lines += [
        "",
        "Checks: `generate_body` and the plain implementation give the same bytes; every HTTP",
        "body has the announced rows and its expected size, small[0] has the spec's SHA-256",
        "when generated and when served from the cache; the cache file kept its inode and mtime.",
    ]
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, document: dict[str, Any], text: str) -> None:
    """The JSON and Markdown results, each written whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in (
        ("server_generation.json", json.dumps(document, indent=2) + "\n"),
        ("server_generation.md", text),
    ):
        path = out_dir / name
        write_atomically(path, content)
        console.print(f"wrote {path}")


def parse_args(argv: list[str] | None, first_rows: int) -> argparse.Namespace:
    """The command line options."""
    parser = argparse.ArgumentParser(
        description="The mock server's generation: in process, over HTTP, and cached.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--rows", type=int, default=300_000, help="rows of small[0] generated in process"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each case")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="the server's --workers"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=HERE / "results", help="where results are written"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rows <= first_rows:
        parser.error(f"--rows must be between 1 and {first_rows:,}")
    if args.repeats < 1 or args.workers < 1:
        parser.error("--repeats and --workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    downloads = (REFERENCE_CATALOG.downloads(EXPORT) or [])[:2]
    args = parse_args(argv, downloads[0].rows)
    arguments = sys.argv[1:] if argv is None else argv
    command = shlex.join(["uv", "run", "python", "benchmarks/server_generation.py", *arguments])
    if shutil.which("curl") is None:
        console.print("error: curl is not on PATH.")
        return 1
    info = machine()
    started = time.perf_counter()
    try:
        generation = measure_generation(downloads[0], args.rows, args.repeats)
        streams, bodies = measure_streams(downloads, args.workers, args.repeats)
        cached, cache_check = measure_cached(downloads[0], args.workers, args.repeats)
    except BenchmarkError as exc:
        console.print(f"error: {exc}")
        return 1
    rows, ratios = summarize(args, generation, streams, cached, downloads)
    title = f"server generation: median (min..max) of {args.repeats} runs"
    render_table(rows, title)
    document = {
        "command": command,
        "machine": info,
        "settings": {
            "export": EXPORT,
            "rows": args.rows,
            "repeats": args.repeats,
            "workers": args.workers,
            "client": "aiohttp in this process, one connection per stream, bytes dropped",
            "downloads": [
                {"index": d.index, "id": str(d.id), "rows": d.rows, "bytes": body.bytes}
                for d, body in zip(downloads, bodies, strict=True)
            ],
        },
        "summary": [
            {
                "measurement": row.measurement,
                "rows_per_second": asdict(row.rows_per_second),
                "mb_per_second": asdict(row.mb_per_second),
                "wall_seconds": asdict(row.wall_seconds),
                "cpu": row.cpu,
                "ratio": row.ratio,
            }
            for row in rows
        ],
        "ratios": ratios,
        "cache_check": cache_check,
        "seconds_total": round(time.perf_counter() - started, 1),
        "runs": {
            "in_process": [asdict(run) for run in generation],
            "http": [{**asdict(run), "rows_per_second": run.rows_per_second} for run in streams],
            "cached": [{**asdict(run), "rows_per_second": run.rows_per_second} for run in cached],
        },
    }
    write_results(args.out_dir, document, markdown(rows, info, command, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
