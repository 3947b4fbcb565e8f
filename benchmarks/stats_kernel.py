"""Micro-benchmark: the kernel's count_stats against its count_lines, on one thread.

    uv run python benchmarks/stats_kernel.py [--repeats R] [--baseline PATH.so] [--output FILE]

The data: the first download of the reference 'small' export, as the project's server makes
it, without its header line, in blocks of whole lines of about 1 MiB, as count_block gets
them. Each timed run calls one function on every block once; the variants run in rotation
(the first one moving each round), so that noise from other processes hits each of them alike,
and the figures are medians over the runs, per block, in process CPU time (steadier on a shared
machine) and wall time. `--baseline` adds the count_lines of another build of the kernel (say,
of the commit before), loaded beside the installed one, to see whether count_lines' own speed
changed. The ranges are the reference data's: heart_rate 40..180, spo2 85..100, bp_sys 90..200,
bp_dia 60..120.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from export_client import _kernel

BLOCK_BYTES = 1 << 20
RANGES = {b"heart_rate": (40, 180), b"spo2": (85, 100), b"bp_sys": (90, 200), b"bp_dia": (60, 120)}
MAX_EXAMPLES = 5


def reference_blocks() -> tuple[list[str], list[bytes]]:
    """The header's field names, and the data lines in blocks of whole lines."""
    from export_server import REFERENCE_CATALOG, generate_body

    downloads = REFERENCE_CATALOG.downloads("small")
    assert downloads is not None
    body = b"".join(generate_body(downloads[0]))
    header_end = body.index(b"\n") + 1
    names = body[: header_end - 1].decode().split(",")
    blocks = []
    start = header_end
    while start < len(body):
        end = body.rfind(b"\n", start, start + BLOCK_BYTES) + 1 or len(body)
        blocks.append(body[start:end])
        start = end
    return names, blocks


def load_build(path: Path) -> ModuleType:
    """Another build of the kernel (a .so file), beside the installed one."""
    spec = importlib.util.spec_from_file_location("export_client._kernel", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of each variant")
    parser.add_argument("--baseline", type=Path, help="another build of the kernel (.so)")
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    names, blocks = reference_blocks()
    ncols = len(names)
    pidx, eidx = names.index("patient_id"), names.index("event_type")
    tidx, vidx = names.index("event_time"), names.index("value")

    def lines_of(kernel: ModuleType) -> Callable[[bytes], object]:
        return lambda block: kernel.count_lines(block, ncols, pidx, eidx, MAX_EXAMPLES)

    def stats(block: bytes) -> object:
        return _kernel.count_stats(block, ncols, pidx, eidx, tidx, vidx, RANGES, MAX_EXAMPLES)

    variants: dict[str, Callable[[bytes], object]] = {"count_lines": lines_of(_kernel)}
    if args.baseline is not None:
        variants["count_lines_baseline"] = lines_of(load_build(args.baseline))
    variants["count_stats"] = stats

    # The same rows, pairs and counts from each, and nothing declined or malformed.
    rows = 0
    for block in blocks:
        counted = variants["count_lines"](block)
        assert isinstance(counted, tuple)
        assert counted[2] == 0
        for name, run in variants.items():
            result = run(block)
            assert isinstance(result, tuple), f"{name} declined a block"
            assert result[1:4] == counted[1:4], name
            counts = {key: (v[0] if isinstance(v, tuple) else v) for key, v in result[0].items()}
            assert counts == counted[0], name
        rows += counted[1]

    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for _ in range(args.repeats):
        for name in order:
            run = variants[name]
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            for block in blocks:
                run(block)
            cpu[name].append((time.process_time() - cpu_start) / len(blocks))
            wall[name].append((time.perf_counter() - wall_start) / len(blocks))
        order = order[1:] + order[:1]

    data_bytes = sum(len(block) for block in blocks)
    print(
        f"reference small[0]: {rows:,} rows, {data_bytes / 1e6:.1f} MB in {len(blocks)} blocks, "
        f"{args.repeats} runs each, one thread; per block, median (min-max) ms"
    )
    print(f"{'variant':22} {'cpu ms':>7} {'(min-max)':>13} {'wall ms':>8} {'MB/s cpu':>9}")
    results: dict[str, object] = {}
    for name in variants:
        median_cpu, median_wall = statistics.median(cpu[name]), statistics.median(wall[name])
        spread = f"({min(cpu[name]) * 1e3:.2f}-{max(cpu[name]) * 1e3:.2f})"
        print(
            f"{name:22} {median_cpu * 1e3:7.3f} {spread:>13} {median_wall * 1e3:8.3f} "
            f"{data_bytes / len(blocks) / median_cpu / 1e6:9.0f}"
        )
        results[name] = {
            "cpu_seconds_per_block": cpu[name],
            "wall_seconds_per_block": wall[name],
            "median_cpu_seconds_per_block": median_cpu,
            "median_wall_seconds_per_block": median_wall,
        }
    ratios: dict[str, float] = {}
    for name in variants:
        if name != "count_lines":
            # The runs of each round lie close in time: their ratios, medianed, weather noise
            # better than the ratio of the medians.
            paired = [a / b for a, b in zip(cpu[name], cpu["count_lines"], strict=True)]
            ratios[name] = statistics.median(paired)
            median_ratio = statistics.median(cpu[name]) / statistics.median(cpu["count_lines"])
            print(
                f"{name} / count_lines: {ratios[name]:.3f} (median of the rounds' cpu ratios), "
                f"{median_ratio:.3f} (ratio of the medians)"
            )
    if args.output is not None:
        args.output.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "bytes": data_bytes,
                    "blocks": len(blocks),
                    "repeats": args.repeats,
                    "python": sys.version.split()[0],
                    "machine": platform.machine(),
                    "results": results,
                    "cpu_ratio_to_count_lines": ratios,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
