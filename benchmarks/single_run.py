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
same measurement as `concurrency.py`). The output must equal `<export>.json` at the repository
root when that file exists. Each run is appended to `results/single-runs.json`.
"""

from __future__ import annotations

import argparse
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
    compile_bytecode,
    machine,
    measure,
    running_server,
)


def run_client(args: argparse.Namespace, url: str, mode: str, scratch: Path) -> dict[str, Any]:
    """One measured client run; raises BenchmarkError if it fails or counts wrong."""
    output = scratch / "counts.json"
    output.unlink(missing_ok=True)
    command = [sys.executable, "-m", "export_client", args.export, "-s", url, "-q", "-t"]
    command += ["-o", str(output)]
    if args.concurrency is not None:
        command += ["-c", str(args.concurrency)]
    if args.client_workers is not None:
        command += ["--workers", str(args.client_workers)]
    measured = measure(command, timeout=args.timeout)
    committed = ROOT / f"{args.export}.json"
    if committed.exists() and output.read_bytes() != committed.read_bytes():
        raise BenchmarkError(f"the client's output differs from {committed.name}")
    match = _SUMMARY.search(measured.stderr)
    if match is None:
        raise BenchmarkError(f"no summary line in the client's stderr: {measured.stderr!r}")
    rows = int(match["rows"].replace(",", ""))
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
        "main_peak_rss_mb": round(measured.maxrss_mb, 1),
        "tree_peak_rss_mb": round(measured.tree_peak_rss_mb, 1),
        "tree_peak_pss_mb": round(measured.tree_peak_pss_mb, 1),
        "retries": int(match["retries"]),
        "matches_committed": committed.exists(),
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
                    runs.append(run_client(args, args.server.rstrip("/"), mode, Path(scratch)))
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
                        runs.append(run_client(args, url, mode, Path(scratch)))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    log = args.out_dir / "single-runs.json"
    history = json.loads(log.read_text()) if log.exists() else []
    for run in runs:
        history.append({**run, "command": command, "machine": info})
        print(json.dumps(run))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps(history, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
