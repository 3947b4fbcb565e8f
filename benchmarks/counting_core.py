"""Benchmark the counting core on one core against a plain csv.reader loop.

    uv run python benchmarks/counting_core.py [--rows N] [--repeats R] [--reference]

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
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType

from _bench import command_line, machine

from export_client._body import count_body
from export_client._counting import COUNTING_CORE, BlockCount, count_block, count_block_pure
from export_client._layout import CsvLayout

HEADER = b"patient_id,event_time,event_type,value\n"
CHUNK_BYTES = 128 << 10
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


def make_body(body: bytes) -> Callable[[], tuple[Pairs, int]]:
    chunks = [body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)]

    def count_whole_body() -> tuple[Pairs, int]:
        counted = count_body(chunks).counts
        return counted.decoded_pairs(), counted.rows

    return count_whole_body


def split_blocks(body: bytes) -> tuple[CsvLayout, list[bytes]]:
    """The layout, and the data lines in blocks of whole lines of about `BLOCK_BYTES`."""
    header_end = body.index(b"\n") + 1
    layout = CsvLayout.from_header(body[:header_end])
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
        "pure_count_block_1m": make_count_block(body, count_block_pure),
        "count_body_128k": make_body(body),
    }
    kernel = load_kernel()
    if kernel is not None:
        variants["count_block_1m"] = make_count_block(body, count_block)
        variants["kernel_count_lines_1m"] = make_kernel(body, kernel)
    else:
        print("note: the compiled kernel is not in use; its variants are left out")
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
    print(
        f"{'variant':28} {'median s':>9} {'min-max s':>15} {'M rows/s':>9} {'MB/s':>7} "
        f"{'x base':>7}  (cpu)"
    )
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
    if kernel is not None:
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
