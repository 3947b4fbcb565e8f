"""What scale-out on Dask buys: the local client against `--cluster local:N`, under a rate limit.

    uv run python benchmarks/cluster.py --cache-dir /work/bench-cache/small --repeats 3
    uv run python benchmarks/cluster.py --cache-dir /work/bench-cache/small --repeats 1  # a check

Each worker process of a cluster has a `--limit-rate` of its own, as each machine of a real
cluster has a link of its own: with a limit well below what this machine moves (20M, 20 MiB/s,
where the cached server and the client move about 250 MB/s), N local workers stand for N
machines, each with a 20 MiB/s link. Each repeat runs, in an order that rotates from one repeat
to the next, every variant once as its own measured subprocess:

- `client`: `python -m export_client EXPORT -s URL -q -o FILE --report FILE --limit-rate R`;
- `cluster:N` for each N of `--workers`: the same with `--cluster local:N` (N worker
  processes, each one download at a time, each limited to R);
- `client nolimit` and `cluster:N nolimit` for each N of `--overhead-workers`: without the
  limit, what Dask costs against the local client when the network is not what bounds the run.

The server (`--server-workers`, default 2) serves the cached bodies of `--cache-dir` (which
must already hold the export's bodies: see end_to_end.py's warm-up). Every run must write
exactly the committed `<export>.json`. Before each repeat the script waits (up to `--patience`
s) until other work uses less than 10% of the cores; each run records the CPU other work used
meanwhile, and a repeat in which other work used more than `--max-other` of the cores (10%)
during any of its runs is kept apart and run again, at most `--retries` times in all.

Measured per run (see `_bench.py`): wall seconds of the whole process (interpreter and cluster
start-up included), user+system CPU seconds of the client and the worker processes it reaped,
the peak RSS of the largest of them, the server's CPU, and the client's own seconds
(`--report`: discovery, cluster start, downloads).

Writes `results/cluster-<export>.{json,md}`: every run, the medians with min..max, throughput
as the export's bytes over the median wall time, and the speed-up against `client`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _bench import (
    CORES,
    RUN_METRICS,
    BenchmarkError,
    Repeats,
    Spread,
    add_repeat_options,
    check_output,
    command_line,
    compile_bytecode,
    machine,
    machine_line,
    measure,
    running_server,
    say,
    write_results,
)

from export_client._rate import parse_rate
from export_server import REFERENCE_CATALOG, ServerProcess


def variants(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """Each variant's name and the options it adds to the client's command."""
    limit = ["--limit-rate", args.limit_rate]
    chosen = [("client", limit)]
    chosen += [(f"cluster:{n}", [*limit, "--cluster", f"local:{n}"]) for n in args.workers]
    chosen.append(("client nolimit", []))
    chosen += [(f"cluster:{n} nolimit", ["--cluster", f"local:{n}"]) for n in args.overhead]
    return chosen


def run(
    args: argparse.Namespace, server: ServerProcess, options: list[str], scratch: Path
) -> dict[str, Any]:
    output, report_file = scratch / "counts.json", scratch / "report.json"
    output.unlink(missing_ok=True)
    report_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "export_client", args.export, "-s", server.url, "-q"]
    command += ["-o", str(output), "--report", str(report_file), *options]
    measured = measure(command, timeout=args.timeout, server=server)
    check_output(args.export, output)
    report = json.loads(report_file.read_text())
    return {
        **measured.figures(),
        "rows": report["rows"],
        "bytes": report["bytes"],
        "own_seconds": report["seconds"],
        "retries": report["retries"],
    }


def summarize(runs: list[dict[str, Any]], names: list[str], nbytes: int) -> dict[str, Any]:
    """Per variant the medians (min..max), MB/s of the median wall time, speed-ups."""
    summary: dict[str, Any] = {}
    for name in names:
        chosen = [run for run in runs if run["variant"] == name]
        figures: dict[str, Any] = {
            metric: asdict(Spread.of([run[metric] for run in chosen])) for metric in RUN_METRICS
        }
        figures["mb_per_second"] = nbytes / 1e6 / figures["wall_seconds"]["median"]
        summary[name] = figures
    for name in names:
        reference = "client nolimit" if name.endswith("nolimit") else "client"
        summary[name]["speedup"] = (
            summary[reference]["wall_seconds"]["median"] / summary[name]["wall_seconds"]["median"]
        )
    return summary


def markdown(args: argparse.Namespace, summary: dict[str, Any], info: dict[str, Any]) -> str:
    lines = [
        f"Scale-out on Dask, export `{args.export}` ({args.rows:,} rows, "
        f"{args.bytes / 1e6:,.0f} MB) from the cached server: medians (min..max) of "
        f"{args.repeats} runs each, interleaved; "
        f"`--limit-rate {args.limit_rate}` per client process (each worker process of a "
        "cluster has its own).",
        "",
        f"    {args.command}",
        "",
        machine_line(info),
        "",
        "| variant | limit | wall s | MB/s | speed-up | own s | CPU s | peak RSS MB | server CPU s "
        "| other CPU s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, figures in summary.items():
        limit = "none" if name.endswith("nolimit") else args.limit_rate
        cells = [
            Spread(**figures[metric]).text(fmt)
            for metric, fmt in (
                ("own_seconds", ".2f"),
                ("cpu_seconds", ".2f"),
                ("peak_rss_mb", ".0f"),
                ("server_cpu_seconds", ".2f"),
                ("other_cpu_seconds", ".2f"),
            )
        ]
        lines.append(
            f"| {name.removesuffix(' nolimit')} | {limit} "
            f"| {Spread(**figures['wall_seconds']).text('.2f')} | {figures['mb_per_second']:.1f} "
            f"| {figures['speedup']:.2f}x | {' | '.join(cells)} |"
        )
    lines += [
        "",
        "Speed-up: the median wall time of `client` (with the same limit, or none) over the "
        "variant's. MB/s: the export's bytes over the median wall time, start-up included.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The local client against --cluster local:N under a rate limit.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--export", default="small", help="the export to count")
    parser.add_argument("--cache-dir", type=Path, required=True, help="the server's warm cache")
    parser.add_argument("--limit-rate", default="20M", help="--limit-rate of each process")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8], help="local:N")
    parser.add_argument(
        "--overhead-workers",
        dest="overhead",
        type=int,
        nargs="*",
        default=[1, 2],
        help="local:N without the limit, against the client without it",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant")
    parser.add_argument("--server-workers", type=int, default=2, help="server --workers")
    add_repeat_options(parser, retries=5, patience=600.0, timeout=600.0)
    args = parser.parse_args(argv)
    parse_rate(args.limit_rate)  # a usage error here rather than in every run
    if args.repeats < 1 or min(args.workers + args.overhead, default=1) < 1:
        parser.error("--repeats and every N must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    downloads = REFERENCE_CATALOG.downloads(args.export)
    if downloads is None:
        print(f"error: no export {args.export!r}", file=sys.stderr)
        return 2
    wanted = {f"{download.id}.csv" for download in downloads}
    if not wanted <= {path.name for path in args.cache_dir.glob("*.csv")}:
        print(f"error: {args.cache_dir} does not hold every body of {args.export}", file=sys.stderr)
        return 2
    args.rows = sum(download.rows for download in downloads)
    args.command = command_line("cluster.py", argv)
    compile_bytecode()
    info = machine()
    chosen = dict(variants(args))
    repeats = Repeats(args.repeats, args.max_other, args.retries, args.patience, say)
    started = time.perf_counter()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-cluster-") as scratch,
            running_server(args.server_workers, args.cache_dir) as server,
        ):
            repeats.run(
                list(chosen),
                lambda name: run(args, server, chosen[name], Path(scratch)),
                lambda figures: (
                    f"{figures['wall_seconds']:.2f} s, {figures['cpu_seconds']:.2f} CPU s, "
                    f"other work {figures['other_cpu_seconds']:.2f} CPU s of {CORES} cores"
                ),
            )
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    runs = repeats.runs
    args.bytes = runs[0]["bytes"]
    summary = summarize(runs, list(chosen), args.bytes)
    info["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    text = markdown(args, summary, info)
    print(text)
    write_results(
        args.out_dir / f"cluster-{args.export}",
        text,
        command=args.command,
        info=info,
        settings=vars(args),
        summary=summary,
        repeats=repeats,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
