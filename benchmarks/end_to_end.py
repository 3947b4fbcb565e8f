"""The client end to end on one export, side by side with its baselines: the README's targets.

    uv run --with duckdb python benchmarks/end_to_end.py small --mode cached \\
        --cache-dir /work/bench-cache/small --variants client pure baseline duckdb --repeats 7
    uv run python benchmarks/end_to_end.py small --mode generating --variants client baseline
    uv run python benchmarks/end_to_end.py large --mode generating --variants client baseline

Each repeat runs every `--variant` once, as its own measured subprocess, in an order that
rotates from one repeat to the next (so that drift on a shared machine hits them alike):

- `client`: `python -m export_client EXPORT -s URL -c N -q -o FILE --report FILE`, with the
  compiled kernel;
- `pure`: the same with `EXPORT_COUNTER_PURE_PYTHON=1`, the pure-Python fallback (its report
  must say so);
- `client-stats`, `pure-stats`: the same two with `--stats`, statistics mode;
- `baseline`: `benchmarks/transfer_only.py EXPORT -s URL -c N`, the transfer alone, through the
  client's own HTTP session;
- `baseline-lines`: the same with `--count-lines`, which also counts every body's line ends
  (`bytes.count`, about the CPU of the client's counting kernel);
- `duckdb` (mode `cached` only, under `uv run --with duckdb`): `benchmarks/duckdb_count.py` over
  the CSV files of the cache directory, read from local disk, 2 threads.

For A/B measurements of a change to the client, `--source LABEL=DIR` adds a variant
`client-LABEL`: the client with `PYTHONPATH=DIR`, a copy of `src/` (with the built kernel) as
it was before or after the change, run in the same rotation as the others; `--stats-source
LABEL=DIR` adds `client-stats-LABEL`, the same in statistics mode.

The server is started here on a free loopback port (`--server-workers`, default 2): without a
cache (`generating`, every body generated as the reference server does) or with `--cache-dir`
(`cached`), which is warmed first by one transfer-only pass and must then hold exactly the
export's downloads. Every client, pure and duckdb run must write exactly the committed
`<export>.json`. Every statistics run must write the same bytes as every other statistics run
of the benchmark (kernel and pure core alike), the counts in it must be the committed
`<export>.json`'s, and where `results/stats-<export>.json` exists, it must be those bytes.
Before each repeat the script waits (up to `--patience` s) until other work uses less than 10%
of the cores, and each run records the CPU that other work used meanwhile
(`other_cpu_seconds`); a repeat in which other work used more than `--max-other` of the cores
(10%) during any of its runs is discarded (kept apart in the results) and run again, at most
`--retries` times in all. Measured per run (see `_bench.py`): wall seconds of the
whole process, user+system CPU seconds, peak RSS (`ru_maxrss`), the server's CPU; with
`--timeline`, the cores the client and the server used every 50 ms.

Writes `results/end_to_end-<export>-<mode>.{json,md}`: every run, the medians with min..max,
and the ratios of the medians to those of `client`, `client-stats`, the baselines and DuckDB
(each that ran). `--out-name` replaces the file names' stem (`end_to_end-small-cached-stats`,
say), so that a run of other variants does not overwrite the README's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _bench import (
    HERE,
    RUN_METRICS,
    TRANSFER_ONLY,
    BenchmarkError,
    Measured,
    Repeats,
    Spread,
    add_repeat_options,
    check_output,
    check_stats_output,
    command_line,
    compile_bytecode,
    core_use,
    machine,
    machine_line,
    measure,
    running_server,
    say,
    write_results,
)

from export_client._counting import PURE_PYTHON_ENV
from export_server import REFERENCE_CATALOG, ServerProcess

DUCKDB_COUNT = HERE / "duckdb_count.py"
VARIANTS = ("client", "pure", "client-stats", "pure-stats", "baseline", "baseline-lines", "duckdb")
# What wall times are compared with, as ratios of the medians (those of the run's variants).
REFERENCES = ("client", "client-stats", "baseline", "baseline-lines", "duckdb")
REFERENCE_NAMES = {"duckdb": "DuckDB"}


class Runner:
    """Runs the variants against one server and checks what each of them counted."""

    def __init__(self, args: argparse.Namespace, url: str, server: ServerProcess, scratch: Path):
        self.args = args
        self.url = url
        self.server = server
        self.scratch = scratch
        self.stats_output: bytes | None = None  # the first statistics run's, for the others

    def run(self, variant: str) -> dict[str, Any]:
        if variant in self.args.sources:
            stats = variant.startswith("client-stats-")
            return self._counted(pure=False, stats=stats, source=self.args.sources[variant])
        if variant == "baseline-lines":
            return self._baseline("--count-lines")
        if variant.endswith("-stats"):
            return self._counted(pure=variant == "pure-stats", stats=True)
        return getattr(self, f"_{variant}")()  # type: ignore[no-any-return]

    def _client_command(self, output: Path, report: Path, *, stats: bool) -> list[str]:
        command = [sys.executable, "-m", "export_client", self.args.export, "-s", self.url]
        command += ["-c", str(self.args.concurrency), "-q", "-o", str(output)]
        command += ["--report", str(report)]
        if stats:
            command.append("--stats")
        if self.args.threads is not None:
            command += ["--threads", str(self.args.threads)]
        return command

    def _counted(
        self, *, pure: bool, stats: bool = False, source: Path | None = None
    ) -> dict[str, Any]:
        output, report_file = self.scratch / "counts.json", self.scratch / "report.json"
        output.unlink(missing_ok=True)
        report_file.unlink(missing_ok=True)
        env = {PURE_PYTHON_ENV: "1"} if pure else {}
        if source is not None:
            env["PYTHONPATH"] = str(source)
        measured = measure(
            self._client_command(output, report_file, stats=stats),
            timeout=self.args.timeout,
            server=self.server,
            timeline=self.args.timeline,
            env=env,
        )
        if stats:
            self._check_stats(output.read_bytes())
        else:
            check_output(self.args.export, output)
        report = json.loads(report_file.read_text())
        core = "pure Python" if pure else "compiled"
        if report["counting_core"] != core:
            raise BenchmarkError(f"the client counted with {report['counting_core']}, not {core}")
        return self._figures(
            measured,
            rows=report["rows"],
            bytes=report["bytes"],
            own_seconds=report["seconds"],
            retries=report["retries"],
        )

    def _check_stats(self, output: bytes) -> None:
        check_stats_output(self.args.export, output)
        if self.stats_output is None:
            self.stats_output = output
        elif output != self.stats_output:
            raise BenchmarkError("two statistics runs of the same export wrote different bytes")

    def _client(self) -> dict[str, Any]:
        return self._counted(pure=False)

    def _pure(self) -> dict[str, Any]:
        return self._counted(pure=True)

    def _baseline(self, *options: str) -> dict[str, Any]:
        command = [sys.executable, str(TRANSFER_ONLY), self.args.export, "-s", self.url]
        command += ["-c", str(self.args.concurrency), "--timeout", str(self.args.timeout)]
        command += options
        measured = measure(
            command, timeout=self.args.timeout, server=self.server, timeline=self.args.timeline
        )
        result = json.loads(measured.stdout)
        return self._figures(
            measured, rows=result["rows"], bytes=result["bytes"], own_seconds=result["seconds"]
        )

    def _duckdb(self) -> dict[str, Any]:
        output = self.scratch / "duckdb.json"
        output.unlink(missing_ok=True)
        command = [sys.executable, str(DUCKDB_COUNT), str(self.args.cache_dir), "-o", str(output)]
        command += ["--threads", "2"]
        measured = measure(command, timeout=self.args.timeout, timeline=self.args.timeline)
        check_output(self.args.export, output)
        result = json.loads(measured.stdout)
        return self._figures(
            measured,
            rows=result["rows"],
            own_seconds=result["query_seconds"],
            duckdb=result["duckdb"],
            threads=result["threads"],
        )

    def _figures(self, measured: Measured, **extra: Any) -> dict[str, Any]:
        figures = {**measured.figures(), **extra}
        if self.args.timeline:
            figures["cores_used"] = core_use(measured.samples)
            figures["rss_mb"] = [
                [round(s.seconds, 3), round(s.rss_mb, 1)] for s in measured.samples
            ]
        return figures


def warm(args: argparse.Namespace, url: str) -> None:
    """Fills the cache with one transfer-only pass (quick when it is full already)."""
    started = time.perf_counter()
    command = [sys.executable, str(TRANSFER_ONLY), args.export, "-s", url, "-c", "2"]
    command.append("--count-lines")
    measure([*command, "--timeout", str(args.timeout)], timeout=args.timeout)
    downloads = REFERENCE_CATALOG.downloads(args.export) or []
    wanted = {f"{download.id}.csv" for download in downloads}
    present = {path.name for path in args.cache_dir.glob("*.csv")}
    if present != wanted:
        raise BenchmarkError(
            f"{args.cache_dir} must hold exactly the {len(wanted)} bodies of {args.export}: "
            f"{len(wanted - present)} missing, {len(present - wanted)} of something else"
        )
    say(f"warm: {args.cache_dir} holds {args.export} ({time.perf_counter() - started:.1f} s)")


def summarize(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Per variant the medians (min..max); the ratios of the medians to baseline and duckdb."""
    summary: dict[str, Any] = {}
    for variant in variants:
        chosen = [run for run in runs if run["variant"] == variant]
        figures: dict[str, Any] = {}
        for metric in RUN_METRICS:
            values = [run[metric] for run in chosen if run.get(metric) is not None]
            if values:
                figures[metric] = asdict(Spread.of(values))
        summary[variant] = figures
    wall = {variant: summary[variant]["wall_seconds"]["median"] for variant in variants}
    for variant in variants:
        for reference in REFERENCES:
            if reference in wall and reference != variant:
                summary[variant][f"wall_vs_{reference}"] = wall[variant] / wall[reference]
    return summary


def markdown(
    args: argparse.Namespace, summary: dict[str, Any], info: dict[str, Any], command: str
) -> str:
    """The summary as Markdown, for the README."""

    def spread(figures: dict[str, Any], metric: str, fmt: str) -> str:
        if metric not in figures:
            return ""
        value = Spread(**figures[metric])
        return value.text(fmt)

    rows = args.rows
    references = [reference for reference in REFERENCES if reference in summary]
    lines = [
        f"End to end, export `{args.export}` ({rows:,} rows, {args.bytes / 1e6:,.0f} MB), "
        f"server `{args.mode}`, `-c {args.concurrency}`: medians (min..max) of "
        f"{args.repeats} runs each, interleaved.",
        "",
        f"    {command}",
        "",
        machine_line(info),
        "",
        "| variant | wall s | rows/s | CPU s | peak RSS MB | server CPU s | other CPU s | "
        + "".join(f"wall / {REFERENCE_NAMES.get(name, name)} | " for name in references).rstrip(),
        "|---|--:|--:|--:|--:|--:|--:|" + "--:|" * len(references),
    ]
    for variant, figures in summary.items():
        median = figures["wall_seconds"]["median"]
        ratios = [
            f"{figures[key]:.2f}" if key in figures else ""
            for key in (f"wall_vs_{reference}" for reference in references)
        ]
        lines.append(
            f"| {variant} | {spread(figures, 'wall_seconds', '.3f')} | {rows / median:,.0f} "
            f"| {spread(figures, 'cpu_seconds', '.2f')} | {spread(figures, 'peak_rss_mb', '.1f')} "
            f"| {spread(figures, 'server_cpu_seconds', '.2f')} "
            f"| {spread(figures, 'other_cpu_seconds', '.2f')} |"
            + "".join(f" {ratio} |" for ratio in ratios)
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The client end to end beside its baselines.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("export", help="the export to count")
    parser.add_argument("--mode", choices=("generating", "cached"), default="cached")
    parser.add_argument("--cache-dir", type=Path, help="the cached mode's --cache-dir (kept)")
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=["client", "baseline"], help="what runs"
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run the client from DIR (a copy of src/) as variant client-LABEL",
    )
    parser.add_argument(
        "--stats-source",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run the client from DIR with --stats as variant client-stats-LABEL",
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs of each variant")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="client and baseline -c")
    parser.add_argument("--threads", type=int, help="client --threads (default: one per core)")
    parser.add_argument("--server-workers", type=int, default=2, help="server --workers")
    parser.add_argument("--timeline", action="store_true", help="record core use every 50 ms")
    add_repeat_options(parser, retries=10, patience=900.0, timeout=3600.0)
    parser.add_argument("--out-name", help="the results' file name without suffix")
    args = parser.parse_args(argv)
    args.sources = {}
    for option, prefix, sources in (
        ("--source", "client-", args.source),
        ("--stats-source", "client-stats-", args.stats_source),
    ):
        for source in sources:
            label, _, directory = source.partition("=")
            path = Path(directory).resolve()
            if not label or not (path / "export_client" / "__init__.py").is_file():
                parser.error(f"{option} {source}: not LABEL=DIR with DIR a copy of src/")
            if f"{prefix}{label}" in VARIANTS:
                parser.error(f"{option} {source}: {prefix}{label} is a variant already")
            args.sources[f"{prefix}{label}"] = path
    args.variants = list(dict.fromkeys([*args.variants, *args.sources]))
    if args.mode == "cached" and args.cache_dir is None:
        parser.error("--mode cached needs --cache-dir")
    if "duckdb" in args.variants:
        if args.mode != "cached":
            parser.error("the duckdb variant reads the cache: it needs --mode cached")
        if importlib.util.find_spec("duckdb") is None:
            parser.error("the duckdb variant needs `uv run --with duckdb python ...`")
    if args.repeats < 1 or args.concurrency < 1:
        parser.error("--repeats and --concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    downloads = REFERENCE_CATALOG.downloads(args.export)
    if downloads is None:
        print(f"error: no export {args.export!r}", file=sys.stderr)
        return 2
    args.rows = sum(download.rows for download in downloads)
    compile_bytecode(*args.sources.values())
    command = command_line("end_to_end.py", argv)
    if "duckdb" in args.variants:
        command = command.replace("uv run python", "uv run --with duckdb python", 1)
    info = machine()
    repeats = Repeats(args.repeats, args.max_other, args.retries, args.patience, say)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as scratch:
            cache_dir = args.cache_dir if args.mode == "cached" else None
            if cache_dir is not None:
                cache_dir.mkdir(parents=True, exist_ok=True)
            with running_server(args.server_workers, cache_dir) as server:
                if cache_dir is not None:
                    warm(args, server.url)
                runner = Runner(args, server.url, server, Path(scratch))
                repeats.run(
                    args.variants,
                    runner.run,
                    lambda run: (
                        f"{run['wall_seconds']:.3f} s, {run['cpu_seconds']:.2f} CPU s, "
                        f"{run['peak_rss_mb']:.1f} MB, "
                        f"other work {run['other_cpu_seconds']:.2f} CPU s"
                    ),
                )
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    runs = repeats.runs
    args.bytes = max((run.get("bytes") or 0 for run in runs), default=0)
    summary = summarize(runs, args.variants)
    info["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    text = markdown(args, summary, info, command)
    print(text)
    write_results(
        args.out_dir / (args.out_name or f"end_to_end-{args.export}-{args.mode}"),
        text,
        command=command,
        info=info,
        settings=vars(args),
        summary=summary,
        repeats=repeats,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
