"""Benchmark the counting core on one core against a plain csv.reader loop.

    uv run python benchmarks/counting_core.py [--rows N] [--repeats R] [--reference] [--stats]

Times, on the same data in the same run: (a) the baseline, a per-line `csv.reader` loop that
counts (patient_id, event_type) in a dict; (b) the pure-Python core, `count_block_pure` (its
fast path), over ~1 MiB blocks of whole lines; (c) `count_body`, the whole upstream pipeline in
one thread (`BodyReader` cutting 128 KiB chunks at arbitrary bytes into pieces of whole
records, each counted by `count_block`, with the kernel where it is built); (d) `count_block`
over the 1 MiB blocks; (e) the compiled kernel's `count_lines` called directly over the same
blocks ((d) and (e) are left out, with a note, where the kernel is not built). The variants run
in rotation, so that noise from other processes hits each of them alike; both wall-clock and
process CPU time are reported (CPU time is steadier on a shared machine). Then the kernel's
throughput on one thread against two threads at once, each counting
all the blocks (it releases the GIL), again in rotation, with hashlib.sha256 as a control.
Results also go to benchmarks/results/counting_core.json.

With `--stats`, statistics mode beside counting, in the same rotation: (a') a plain row-by-row
reference, `csv.reader` with `int` and `datetime.fromisoformat`, keeping each pair's count, sum,
min, max, anomalies and earliest and latest time in a dict; (b') `count_block_pure` with
statistics over the same 1 MiB blocks (the pure core's statistics fast path); (c') `count_body`
with statistics; (d') `count_block` with statistics; (e') the kernel's `count_stats` called
directly. Every statistics variant must give the reference's figures exactly, every counting
variant the baseline's counts. The threads part is left out; results go to
`results/counting_core-stats.json`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import io
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

from _bench import command_line, machine

from export_client._body import count_body
from export_client._counting import COUNTING_CORE, BlockCount, count_block, count_block_pure
from export_client._layout import CsvLayout
from export_client._stats import Statistics

HEADER = b"patient_id,event_time,event_type,value\n"
CHUNK_BYTES = 128 << 10
BLOCK_BYTES = 1 << 20
RESULT_FILE = Path(__file__).parent / "results" / "counting_core.json"
STATS_RESULT_FILE = RESULT_FILE.with_name("counting_core-stats.json")
# The normal ranges, written out here rather than taken from the client.
RANGES: dict[str, tuple[int, int]] = {
    "heart_rate": (40, 180),
    "spo2": (85, 100),
    "bp_sys": (90, 200),
    "bp_dia": (60, 120),
}
STATS = Statistics.of(dict(RANGES))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Pairs = dict[tuple[str, str], int]
# Per pair: count, sum, min, max, anomalies, earliest and latest time (microseconds).
Figures = tuple[int, Any, Any, Any, int | None, int, int]
Groups = dict[tuple[str, str], Figures]


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


def baseline_stats(body: bytes) -> tuple[Groups, int]:
    """The plain way, with statistics: csv.reader, int or Decimal, datetime.fromisoformat."""
    groups: dict[tuple[str, str], list[Any]] = {}
    reader = csv.reader(io.StringIO(body.decode("utf-8"), newline=""))
    header = next(reader)
    pidx, eidx = header.index("patient_id"), header.index("event_type")
    tidx, vidx = header.index("event_time"), header.index("value")
    microsecond = timedelta(microseconds=1)
    rows = 0
    for row in reader:
        rows += 1
        key = (row[pidx], row[eidx])
        text = row[vidx]
        value = int(text) if "." not in text else Fraction(Decimal(text))
        moment = datetime.fromisoformat(row[tidx])
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        when = (moment - EPOCH) // microsecond
        bounds = RANGES.get(row[eidx])
        anomaly = None if bounds is None else int(not bounds[0] <= value <= bounds[1])
        add_figures(groups, key, (1, value, value, value, anomaly, when, when))
    return {key: tuple(group) for key, group in groups.items()}, rows


def add_figures(groups: dict[Any, list[Any]], key: Any, figures: Figures) -> None:
    """Merges a pair's figures (one row's, or a block's) into its group's."""
    group = groups.get(key)
    if group is None:
        groups[key] = list(figures)
        return
    count, total, low, high, anomalies, earliest, latest = figures
    group[0] += count
    group[1] += total
    group[2] = min(group[2], low)
    group[3] = max(group[3], high)
    if anomalies is not None:
        group[4] += anomalies
    group[5] = min(group[5], earliest)
    group[6] = max(group[6], latest)


def decoded_groups(counted: BlockCount) -> Groups:
    assert counted.groups is not None
    return {
        (p.decode(), e.decode()): (
            g.count,
            g.total,
            g.minimum,
            g.maximum,
            g.anomalies,
            g.earliest,
            g.latest,
        )
        for (p, e), g in counted.groups.items()
    }


def make_body_stats(body: bytes) -> Callable[[], tuple[Groups, int]]:
    chunks = [body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)]

    def count_whole_body() -> tuple[Groups, int]:
        counted = count_body(chunks, stats=STATS).counts
        return decoded_groups(counted), counted.rows

    return count_whole_body


def make_count_block_stats(
    body: bytes, count: Callable[[bytes, CsvLayout, Statistics], BlockCount]
) -> Callable[[], tuple[Groups, int]]:
    """`count` with statistics over the 1 MiB blocks, merged as a download's blocks are."""
    layout, blocks = split_blocks(body, stats=True)

    def count_blocks() -> tuple[Groups, int]:
        total = BlockCount(groups={})
        for block in blocks:
            total.merge(count(block, layout, STATS))
        return decoded_groups(total), total.rows

    return count_blocks


def make_kernel_stats(body: bytes, kernel: ModuleType) -> Callable[[], tuple[Groups, int]]:
    layout, blocks = split_blocks(body, stats=True)
    args = (
        layout.field_count,
        layout.patient_index,
        layout.event_type_index,
        layout.time_index,
        layout.value_index,
        STATS.kernel_bounds,
        5,
    )

    def count_stats() -> tuple[Groups, int]:
        groups: dict[tuple[bytes, bytes], list[int]] = {}
        rows = 0
        for block in blocks:
            counted = kernel.count_stats(block, *args)
            assert counted is not None, "the kernel declined a block of the benchmark data"
            for key, figures in counted[0].items():
                add_figures(groups, key, figures)
            rows += counted[1]
        decoded = {(p.decode(), e.decode()): tuple(g) for (p, e), g in groups.items()}
        return decoded, rows  # type: ignore[return-value]

    return count_stats


def make_body(body: bytes) -> Callable[[], tuple[Pairs, int]]:
    chunks = [body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)]

    def count_whole_body() -> tuple[Pairs, int]:
        counted = count_body(chunks).counts
        return counted.decoded_pairs(), counted.rows

    return count_whole_body


def split_blocks(body: bytes, *, stats: bool = False) -> tuple[CsvLayout, list[bytes]]:
    """The layout, and the data lines in blocks of whole lines of about `BLOCK_BYTES`."""
    header_end = body.index(b"\n") + 1
    layout = CsvLayout.from_header(body[:header_end], stats=stats)
    blocks = []
    start = header_end
    while start < len(body):
        end = body.rfind(b"\n", start, start + BLOCK_BYTES) + 1 or len(body)
        blocks.append(body[start:end])
        start = end
    return layout, blocks


def load_kernel() -> ModuleType | None:
    if COUNTING_CORE != "compiled":
        return None  # not built, or EXPORT_COUNTER_PURE_PYTHON set
    return importlib.import_module("export_client._kernel")


def make_count_block(
    body: bytes, count: Callable[[bytes, CsvLayout], BlockCount]
) -> Callable[[], tuple[Pairs, int]]:
    layout, blocks = split_blocks(body)

    def count_blocks() -> tuple[Pairs, int]:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        rows = 0
        for block in blocks:
            counted = count(block, layout)
            pairs.update(counted.pairs)
            rows += counted.rows
        return {(p.decode(), e.decode()): n for (p, e), n in pairs.items()}, rows

    return count_blocks


def make_kernel(body: bytes, kernel: ModuleType) -> Callable[[], tuple[Pairs, int]]:
    layout, blocks = split_blocks(body)
    args = (layout.field_count, layout.patient_index, layout.event_type_index, 5)

    def count_lines() -> tuple[Pairs, int]:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        rows = 0
        for block in blocks:
            counted = kernel.count_lines(block, *args)
            assert counted is not None, "the kernel declined a block of the benchmark data"
            pairs.update(counted[0])
            rows += counted[1]
        return {(p.decode(), e.decode()): n for (p, e), n in pairs.items()}, rows

    return count_lines


def kernel_threads(body: bytes, kernel: ModuleType, repeats: int) -> dict[str, object]:
    """The kernel on one thread, and on two threads at once each counting every block.

    Beside it, as a control, hashlib.sha256 over the same blocks, which also releases the GIL:
    where it does not scale either, the second core was busy with other work, not held up by
    the GIL. Process CPU time over wall time is how many cores the threads kept busy.
    """
    layout, blocks = split_blocks(body)
    args = (layout.field_count, layout.patient_index, layout.event_type_index, 5)
    data_bytes = sum(len(block) for block in blocks)

    def count_all() -> None:
        for block in blocks:
            kernel.count_lines(block, *args)

    def hash_all() -> None:
        for block in blocks:
            hashlib.sha256(block)

    workloads = {"kernel": count_all, "sha256_control": hash_all}
    runs = [(name, threads) for name in workloads for threads in (1, 2)]
    wall: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
    cpu: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(repeats):
            for name, threads in runs:
                wall_start, cpu_start = time.perf_counter(), time.process_time()
                for future in [pool.submit(workloads[name]) for _ in range(threads)]:
                    future.result()
                cpu[name, threads].append(time.process_time() - cpu_start)
                wall[name, threads].append(time.perf_counter() - wall_start)
    results: dict[str, object] = {}
    for name in workloads:
        result: dict[str, object] = {}
        for threads in (1, 2):
            times = wall[name, threads]
            median = statistics.median(times)
            result[f"{threads}_threads"] = {
                "wall_seconds": times,
                "cpu_seconds": cpu[name, threads],
                "median_wall_seconds": median,
                "bytes_per_second": threads * data_bytes / median,
                "median_cores_busy": statistics.median(
                    c / w for c, w in zip(cpu[name, threads], times, strict=True)
                ),
            }
        one, two = (statistics.median(wall[name, threads]) for threads in (1, 2))
        result["speedup_2_vs_1"] = 2 * one / two
        results[name] = result
    return results


def mode(variant: str) -> str:
    """Which result a variant gives: "stats" or "counts"."""
    return "stats" if "stats" in variant else "counts"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="synthetic data rows")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each variant")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="use the reference 'small' export's first download (713,429 rows) instead",
    )
    parser.add_argument("--stats", action="store_true", help="statistics mode too, beside counting")
    parser.add_argument("--output", type=Path, help="JSON result file (default: by mode)")
    args = parser.parse_args()
    if args.output is None:
        args.output = STATS_RESULT_FILE if args.stats else RESULT_FILE

    body = reference_body() if args.reference else synthetic_body(args.rows)
    variants: dict[str, Callable[[], tuple[Any, int]]] = {
        "baseline_csv_reader": lambda: baseline(body),
        "pure_count_block_1m": make_count_block(body, count_block_pure),
        "count_body_128k": make_body(body),
    }
    if args.stats:
        variants["baseline_csv_reader_stats"] = lambda: baseline_stats(body)
        variants["pure_stats_1m"] = make_count_block_stats(body, count_block_pure)
        variants["count_body_stats_128k"] = make_body_stats(body)
    kernel = load_kernel()
    if kernel is not None:
        variants["count_block_1m"] = make_count_block(body, count_block)
        variants["kernel_count_lines_1m"] = make_kernel(body, kernel)
        if args.stats:
            variants["count_block_stats_1m"] = make_count_block_stats(body, count_block)
            variants["kernel_count_stats_1m"] = make_kernel_stats(body, kernel)
    else:
        print("note: the compiled kernel is not in use; its variants are left out")
    expected: dict[str, tuple[Any, int]] = {"counts": baseline(body)}
    if args.stats:
        expected["stats"] = baseline_stats(body)
    rows = expected["counts"][1]
    for name, run in variants.items():
        assert run() == expected[mode(name)], f"{name} differs from the plain {mode(name)}"

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
    print(
        f"{'variant':28} {'median s':>9} {'min-max s':>15} {'M rows/s':>9} {'MB/s':>7} "
        f"{'x base':>7}  (cpu)"
    )
    bases = {"counts": "baseline_csv_reader", "stats": "baseline_csv_reader_stats"}
    results = {}
    for name in variants:
        base_wall = statistics.median(wall[bases[mode(name)]])
        base_cpu = statistics.median(cpu[bases[mode(name)]])
        median_wall = statistics.median(wall[name])
        median_cpu = statistics.median(cpu[name])
        results[name] = {
            "wall_seconds": wall[name],
            "cpu_seconds": cpu[name],
            "median_wall_seconds": median_wall,
            "median_cpu_seconds": median_cpu,
            "rows_per_second_wall": rows / median_wall,
            "rows_per_second_cpu": rows / median_cpu,
            "bytes_per_second_wall": len(body) / median_wall,
            "bytes_per_second_cpu": len(body) / median_cpu,
            "speedup_vs_baseline_wall": base_wall / median_wall,
            "speedup_vs_baseline_cpu": base_cpu / median_cpu,
        }
        spread = f"{min(wall[name]):.3f}-{max(wall[name]):.3f}"
        print(
            f"{name:28} {median_wall:9.3f} {spread:>15} {rows / median_wall / 1e6:9.2f} "
            f"{len(body) / median_wall / 1e6:7.0f} {base_wall / median_wall:7.2f}  "
            f"({rows / median_cpu / 1e6:.2f} M rows/s, x{base_cpu / median_cpu:.2f})"
        )
    threads = None
    if kernel is not None and not args.stats:
        threads = kernel_threads(body, kernel, max(args.repeats, 5))
        for name, result in threads.items():
            assert isinstance(result, dict)
            for count in (1, 2):
                run = result[f"{count}_threads"]
                times = run["wall_seconds"]
                print(
                    f"{name}, {count} thread{'s' if count > 1 else ' '} at once: median "
                    f"{run['median_wall_seconds']:.3f} s ({min(times):.3f}-{max(times):.3f}) "
                    f"for {count} x the data, {run['bytes_per_second'] / 1e6:.0f} MB/s in all, "
                    f"{run['median_cores_busy']:.2f} cores busy"
                )
            print(f"{name}: two threads get {result['speedup_2_vs_1']:.2f}x the bytes/s of one")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "command": command_line("counting_core.py", None),
                "machine": machine(),
                "source": source,
                "rows": rows,
                "bytes": len(body),
                "repeats": args.repeats,
                "results": results,
                "kernel_threads": threads,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
