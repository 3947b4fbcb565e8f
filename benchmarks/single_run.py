"""One measured client run on an export: for the figures of `large`, too long to repeat.

    uv run python benchmarks/single_run.py large --mode generating
    uv run python benchmarks/single_run.py large --mode cached --cache-dir ~/.cache/exports
    uv run python benchmarks/single_run.py demo --server http://localhost:8000

It runs `python -m export_client EXPORT -q -t -o FILE` once per repeat as a subprocess, against a
server it starts on a free loopback port (`generating`: no cache; `cached`: `--cache-dir`, warmed
by one transfer-only pass first, which is quick when the cache is warm already) or
against `--server`. Per run it reports the whole process's wall seconds, the client's own seconds
(`--time`), rows/s, CPU seconds of the client and its counting workers, and peak memory: the
main process's RSS, and the whole client process tree's RSS and PSS, sampled every 100 ms (the
same measurement as `concurrency.py`); against its own server, also the server's CPU seconds
and how busy both kept the cores. With `--timeline`, the run also records, every 100 ms, how
many cores the client's main process, its counting workers and the server were using, and
sums that up as the start-up phase (until they first use 1.5 cores together) and the mean
cores busy after it. The output must equal `<export>.json` at the repository root when that
file exists. Each run is appended to `results/single-runs.json`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from concurrency import (
    _SUMMARY,
    HERE,
    ROOT,
    TRANSFER_ONLY,
    BenchmarkError,
    busy,
    compile_bytecode,
    machine,
    measure,
    running_server,
)

# Client and server together using this many cores: the start-up phase is over.
PARALLEL_CORES = 1.5


def core_use(timeline: list[tuple[float, float, float, float]]) -> list[list[float]]:
    """Per sampling interval: its end, and the cores used by main process, workers, server."""
    rows = []
    for (t0, main0, tree0, server0), (t1, main1, tree1, server1) in itertools.pairwise(timeline):
        span = t1 - t0
        workers = (tree1 - main1) - (tree0 - main0)
        rows.append(
            [
                round(t1, 2),
                round((main1 - main0) / span, 2),
                round(workers / span, 2),
                round((server1 - server0) / span, 2),
            ]
        )
    return rows


def phases(use: list[list[float]]) -> dict[str, float | None]:
    """How long the run used less than PARALLEL_CORES, and the mean cores busy after that."""
    started = next((i for i, row in enumerate(use) if sum(row[1:]) >= PARALLEL_CORES), None)
    if started is None:
        return {"start_phase_seconds": None, "cores_busy_after_start": None}
    after = use[started:]
    return {
        "start_phase_seconds": use[started - 1][0] if started else 0.0,
        "cores_busy_after_start": round(sum(sum(row[1:]) for row in after) / len(after), 2),
    }


def run_client(
    args: argparse.Namespace, url: str, mode: str, scratch: Path, server_pid: int | None
) -> dict[str, Any]:
    """One measured client run; raises BenchmarkError if it fails or counts wrong."""
    output = scratch / "counts.json"
    output.unlink(missing_ok=True)
    command = [sys.executable, "-m", "export_client", args.export, "-s", url, "-q", "-t"]
    command += ["-o", str(output)]
    if args.concurrency is not None:
        command += ["-c", str(args.concurrency)]
    if args.client_workers is not None:
        command += ["--workers", str(args.client_workers)]
    measured = measure(command, timeout=args.timeout, server_pid=server_pid, timeline=args.timeline)
    committed = ROOT / f"{args.export}.json"
    if committed.exists() and output.read_bytes() != committed.read_bytes():
        raise BenchmarkError(f"the client's output differs from {committed.name}")
    match = _SUMMARY.search(measured.stderr)
    if match is None:
        raise BenchmarkError(f"no summary line in the client's stderr: {measured.stderr!r}")
    rows = int(match["rows"].replace(",", ""))
    server_cpu = measured.server_cpu_seconds
    busy_share = busy(measured.cpu_seconds, server_cpu, measured.wall_seconds)
    extra: dict[str, Any] = {}
    if measured.timeline is not None:
        use = core_use(measured.timeline)
        extra = {**phases(use), "cores_used": use}
    return {
        "export": args.export,
        "mode": mode,
        "concurrency": args.concurrency,
        "client_workers": args.client_workers,
        "wall_seconds": round(measured.wall_seconds, 3),
        "own_seconds": float(match["seconds"].replace(",", "")),
        "rows": rows,
        "rows_per_second": round(rows / measured.wall_seconds),
        "cpu_seconds": round(measured.cpu_seconds, 2),
        "server_cpu_seconds": None if server_cpu is None else round(server_cpu, 2),
        "busy": None if busy_share is None else round(busy_share, 2),
        "main_peak_rss_mb": round(measured.maxrss_mb, 1),
        "tree_peak_rss_mb": round(measured.tree_peak_rss_mb, 1),
        "tree_peak_pss_mb": round(measured.tree_peak_pss_mb, 1),
        "retries": int(match["retries"]),
        "matches_committed": committed.exists(),
        **extra,
    }


def warm(args: argparse.Namespace, url: str, cache_dir: Path) -> None:
    """Fills the cache with one transfer-only pass (quick when it is full already)."""
    command = [sys.executable, str(TRANSFER_ONLY), args.export, "-s", url, "-c", "2"]
    measure([*command, "--timeout", str(args.timeout)], timeout=args.timeout)
    print(f"warmed {cache_dir}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="the export to count")
    parser.add_argument("--mode", choices=("generating", "cached"), default="generating")
    parser.add_argument("--cache-dir", type=Path, help="the cache of mode cached (kept)")
    parser.add_argument("--server", help="use this server instead of starting one")
    parser.add_argument("--server-workers", type=int, default=2, help="server --workers")
    parser.add_argument("--concurrency", type=int, help="client -c (default: its own)")
    parser.add_argument("--client-workers", type=int, help="client --workers (default: auto)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--timeline", action="store_true", help="record the cores in use every 100 ms"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.mode == "cached" and args.cache_dir is None and args.server is None:
        parser.error("--mode cached needs --cache-dir")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    compile_bytecode()
    command = "uv run python benchmarks/single_run.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    info = machine()
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-single-") as scratch:
            if args.server:
                mode = "external"
                for _ in range(args.repeats):
                    server = args.server.rstrip("/")
                    runs.append(run_client(args, server, mode, Path(scratch), None))
            else:
                mode = args.mode
                cache_dir = args.cache_dir if mode == "cached" else None
                if cache_dir is not None:
                    cache_dir.mkdir(parents=True, exist_ok=True)
                with running_server(args.server_workers, cache_dir) as server:
                    url = server.url
                    if cache_dir is not None:
                        warm(args, url, cache_dir)
                    for _ in range(args.repeats):
                        pid = server.process.pid
                        runs.append(run_client(args, url, mode, Path(scratch), pid))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    log = args.out_dir / "single-runs.json"
    history = json.loads(log.read_text()) if log.exists() else []
    for run in runs:
        history.append({**run, "command": command, "machine": info})
        print(json.dumps({key: value for key, value in run.items() if key != "cores_used"}))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps(history, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
