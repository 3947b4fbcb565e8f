"""Benchmark the counting core on one core against a plain csv.reader loop.

    uv run python benchmarks/counting_core.py [--rows N] [--repeats R] [--reference]

Times, on the same data in the same run: (a) the baseline, a per-line `csv.reader` loop that
counts (patient_id, event_type) in a dict; (b) `DownloadCounter.feed` over 32 KiB chunks cut
at arbitrary bytes; (c) `count_block` over ~1 MiB blocks of whole lines. The variants run in
rotation, so that noise from other processes hits each of them alike; both wall-clock and
process CPU time are reported (CPU time is steadier on a shared machine). Results also go to
benchmarks/results/counting_core.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from export_client._counting import CsvLayout, DownloadCounter, count_block

HEADER = b"patient_id,event_time,event_type,value\n"
CHUNK_BYTES = 32 << 10
BLOCK_BYTES = 1 << 20
RESULT_FILE = Path(__file__).parent / "results" / "counting_core.json"

Pairs = dict[tuple[str, str], int]


def synthetic_body(rows: int) -> bytes:
    """Rows shaped like the reference 'small' export, made deterministically."""
    rng = random.Random(20250826)
    patients = ["S001", "S002", "S003", "S004", "S005", "S006"]
    event_types = ["heart_rate", "spo2"]
    t = datetime(2025, 8, 26)
    step = timedelta(seconds=3)
    lines = [HEADER]
    for _ in range(rows):
        event_time = t + timedelta(microseconds=rng.randrange(3_000_000))
        event_type = rng.choice(event_types)
        value = int(rng.gauss(75, 15)) if event_type == "heart_rate" else int(rng.gauss(97, 2))
        stamp = event_time.isoformat(timespec="microseconds")
        lines.append(f"{rng.choice(patients)},{stamp}Z,{event_type},{value}\n".encode())
        t += step
    return b"".join(lines)


def reference_body() -> bytes:
    """The first download of the reference 'small' export, from the project's own server."""
    from export_server import REFERENCE_CATALOG, generate_body

    downloads = REFERENCE_CATALOG.downloads("small")
    assert downloads is not None
    return b"".join(generate_body(downloads[0]))


def baseline(body: bytes) -> tuple[Pairs, int]:
    """The plain way: csv.reader over the lines, one dict update per row."""
    counts: Pairs = {}
    reader = csv.reader(io.StringIO(body.decode("utf-8"), newline=""))
    header = next(reader)
    pidx, eidx = header.index("patient_id"), header.index("event_type")
    rows = 0
    for row in reader:
        rows += 1
        key = (row[pidx], row[eidx])
        counts[key] = counts.get(key, 0) + 1
    return counts, rows


def make_feed(body: bytes) -> Callable[[], tuple[Pairs, int]]:
    chunks = [body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)]

    def feed() -> tuple[Pairs, int]:
        counter = DownloadCounter()
        for chunk in chunks:
            counter.feed(chunk)
        counter.finish()
        result = counter.result()
        return dict(result.pairs), result.rows

    return feed


def make_count_block(body: bytes) -> Callable[[], tuple[Pairs, int]]:
    header_end = body.index(b"\n") + 1
    layout = CsvLayout.from_header(body[:header_end])
    blocks = []
    start = header_end
    while start < len(body):
        end = body.rfind(b"\n", start, start + BLOCK_BYTES) + 1 or len(body)
        blocks.append(body[start:end])
        start = end

    def count_blocks() -> tuple[Pairs, int]:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        rows = 0
        for block in blocks:
            counted = count_block(block, layout)
            pairs.update(counted.pairs)
            rows += counted.rows
        return {(p.decode(), e.decode()): n for (p, e), n in pairs.items()}, rows

    return count_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="synthetic data rows")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each variant")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="use the reference 'small' export's first download (713,429 rows) instead",
    )
    parser.add_argument("--output", type=Path, default=RESULT_FILE, help="JSON result file")
    args = parser.parse_args()

    body = reference_body() if args.reference else synthetic_body(args.rows)
    variants: dict[str, Callable[[], tuple[Pairs, int]]] = {
        "baseline_csv_reader": lambda: baseline(body),
        "download_counter_feed_32k": make_feed(body),
        "count_block_1m": make_count_block(body),
    }
    expected = baseline(body)
    rows = expected[1]
    for name, run in variants.items():
        assert run() == expected, f"{name} counts differ from the baseline"

    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            run()
            cpu[name].append(time.process_time() - cpu_start)
            wall[name].append(time.perf_counter() - wall_start)

    source = "reference small[0]" if args.reference else "synthetic"
    print(f"{source}: {rows:,} rows, {len(body) / 1e6:.1f} MB, {args.repeats} repeats, 1 core")
    print(f"{'variant':28} {'median s':>9} {'min-max s':>15} {'M rows/s':>9} {'x base':>7}  (cpu)")
    base_wall = statistics.median(wall["baseline_csv_reader"])
    base_cpu = statistics.median(cpu["baseline_csv_reader"])
    results = {}
    for name in variants:
        median_wall = statistics.median(wall[name])
        median_cpu = statistics.median(cpu[name])
        results[name] = {
            "wall_seconds": wall[name],
            "cpu_seconds": cpu[name],
            "median_wall_seconds": median_wall,
            "median_cpu_seconds": median_cpu,
            "rows_per_second_wall": rows / median_wall,
            "rows_per_second_cpu": rows / median_cpu,
            "speedup_vs_baseline_wall": base_wall / median_wall,
            "speedup_vs_baseline_cpu": base_cpu / median_cpu,
        }
        spread = f"{min(wall[name]):.3f}-{max(wall[name]):.3f}"
        print(
            f"{name:28} {median_wall:9.3f} {spread:>15} {rows / median_wall / 1e6:9.2f} "
            f"{base_wall / median_wall:7.2f}  ({rows / median_cpu / 1e6:.2f} M rows/s, "
            f"x{base_cpu / median_cpu:.2f})"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "source": source,
                "rows": rows,
                "bytes": len(body),
                "repeats": args.repeats,
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
