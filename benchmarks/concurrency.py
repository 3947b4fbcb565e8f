"""Benchmark the whole client pipeline against pure transfer, across concurrency levels.

    uv run python benchmarks/concurrency.py [--export small] [--levels 1 2 4 8 16] [--repeats 3]
        [--mode both|generating|cached] [--server URL] [--server-workers N]
        [--threads N] [--out-dir benchmarks/results]

For each server mode and each concurrency level, runs the real client
(`python -m export_client EXPORT -s URL -c N -q -o FILE --report FILE`) `--repeats` times, each
as its own subprocess, interleaved with as many runs of the transfer-only baseline
(`benchmarks/transfer_only.py`: the same downloads at the same concurrency, read and discarded).
Per run it records wall seconds, the client's rows, bytes, own seconds and retries (from its
`--report`), the user+sys CPU seconds of the process and its peak RSS (`ru_maxrss`, see
`_bench.py`), and the server's CPU meanwhile. It reports medians with min/max, and the ratios
client/baseline of wall time and rows/s: wall time alone is noise on a shared machine, ratios
measured side by side are not. Every client run must exit 0 and write exactly the committed
`<export>.json` at the repository root, when that file exists.

Server modes, each a server started here on a free loopback port with `--server-workers`:
`generating` (no cache: every body is generated as the reference server does, so it shows how
concurrency uses the server's cores) and `cached` (a warmed `--cache-dir`: bodies come from
disk, so it shows the client's own cost). With `--server URL` that server is used instead, as
the single mode `external`.

Writes benchmarks/results/concurrency-<export>.{json,md,svg}: all raw runs, the summary, the
machine and the command; a Markdown table for the README; a chart of rows/s by concurrency.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from _bench import (
    CORES,
    RESULTS,
    TRANSFER_ONLY,
    BenchmarkError,
    Measured,
    Spread,
    check_output,
    command_line,
    committed_result,
    compile_bytecode,
    machine,
    machine_line,
    measure,
    running_server,
    write_atomically,
)
from rich.console import Console
from rich.table import Table

from export_server import ServerProcess

# A level whose median rows/s is within this fraction of the best counts as good as the best.
NEAR_BEST = 0.05

# Progress lines stay one line each in a log file too.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


@dataclass
class Run:
    """One measured subprocess: a client run or a baseline run."""

    mode: str
    kind: str  # "client" or "baseline"
    level: int
    repeat: int
    wall_seconds: float
    # The program's own timing, without interpreter start-up and imports.
    inner_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    rows: int
    bytes: int
    retries: int
    # CPU the server (its main process and workers) used during the run; None if not ours.
    server_cpu_seconds: float | None
    # CPU that everything else on the machine used during the run.
    other_cpu_seconds: float

    @classmethod
    def of(cls, measured: Measured, **fields: Any) -> Run:
        """A run from what `measure` gave, plus the fields read from the program's output."""
        return cls(
            wall_seconds=measured.wall_seconds,
            cpu_seconds=measured.cpu_seconds,
            peak_rss_mb=measured.peak_rss_mb,
            server_cpu_seconds=measured.server_cpu_seconds,
            other_cpu_seconds=measured.other_cpu_seconds,
            **fields,
        )

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall_seconds

    @property
    def mb_per_second(self) -> float:
        return self.bytes / 1e6 / self.wall_seconds

    @property
    def busy(self) -> float | None:
        """The share of the machine's cores that client and server kept busy during the run."""
        if self.server_cpu_seconds is None:
            return None
        return (self.cpu_seconds + self.server_cpu_seconds) / (CORES * self.wall_seconds)


@dataclass
class Level:
    """The summary of one mode at one concurrency level."""

    level: int
    client: dict[str, Spread] = field(default_factory=dict)
    baseline: dict[str, Spread] = field(default_factory=dict)
    wall_ratio: float = 0.0
    rate_ratio: float = 0.0


METRICS = (
    "wall_seconds",
    "inner_seconds",
    "rows_per_second",
    "mb_per_second",
    "cpu_seconds",
    "peak_rss_mb",
    "retries",
    "server_cpu_seconds",
    "other_cpu_seconds",
    "busy",
)


class Bench:
    """Runs the client and the baseline against one server and checks what the client writes."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        # Our own server, whose CPU each run measures; None for a --server URL.
        self.server: ServerProcess | None = None
        self.first_output: bytes | None = None
        if not committed_result(args.export):
            console.print(
                f"[yellow]warning:[/] no {args.export}.json at the repository root; "
                "checking only that every run writes the same"
            )

    def client(self, mode: str, url: str, level: int, repeat: int) -> Run:
        output = self.workdir / "counts.json"
        report_file = self.workdir / "report.json"
        output.unlink(missing_ok=True)
        report_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "export_client", self.args.export, "-s", url]
        command += ["-c", str(level), "-q", "-o", str(output), "--report", str(report_file)]
        if self.args.threads is not None:
            command += ["--threads", str(self.args.threads)]
        measured = measure(command, timeout=self.args.timeout, server=self.server)
        check_output(self.args.export, output)
        written = output.read_bytes()
        if self.first_output is None:
            self.first_output = written
        elif written != self.first_output:
            raise BenchmarkError(
                f"the client's output ({mode}, -c {level}, repeat {repeat}) differs from "
                "the first run's"
            )
        report = json.loads(report_file.read_text())
        return Run.of(
            measured,
            mode=mode,
            kind="client",
            level=level,
            repeat=repeat,
            inner_seconds=float(report["seconds"]),
            rows=int(report["rows"]),
            bytes=int(report["bytes"]),
            retries=int(report["retries"]),
        )

    def baseline(self, mode: str, url: str, level: int, repeat: int) -> Run:
        command = [sys.executable, str(TRANSFER_ONLY), self.args.export, "-s", url]
        command += ["-c", str(level), "--timeout", str(self.args.timeout)]
        measured = measure(command, timeout=self.args.timeout, server=self.server)
        result = json.loads(measured.stdout)
        return Run.of(
            measured,
            mode=mode,
            kind="baseline",
            level=level,
            repeat=repeat,
            inner_seconds=float(result["seconds"]),
            rows=int(result["rows"]),
            bytes=int(result["bytes"]),
            retries=0,
        )


def warm_cache(bench: Bench, url: str, cache_dir: Path, workers: int) -> None:
    """Fetches every download once so that the measured runs are all served from disk."""
    command = [sys.executable, str(TRANSFER_ONLY), bench.args.export, "-s", url]
    command += ["-c", str(workers), "--timeout", str(bench.args.timeout), "--count-lines"]
    started = time.perf_counter()
    measured = measure(command, timeout=bench.args.timeout)
    downloads = int(json.loads(measured.stdout)["downloads"])
    cached = [p for p in cache_dir.glob("*.csv") if p.stat().st_size > 0]
    if len(cached) < downloads:
        raise BenchmarkError(
            f"warming cached {len(cached)} of {downloads} downloads in {cache_dir}"
        )
    console.print(f"cached: warmed {downloads} downloads in {time.perf_counter() - started:.1f} s")


def measure_mode(bench: Bench, mode: str, url: str, runs: list[Run]) -> None:
    """The interleaved client and baseline runs of one mode at every level."""
    for level in bench.args.levels:
        for repeat in range(bench.args.repeats):
            # Alternating, so that drift on a shared machine hits client and baseline alike.
            client = bench.client(mode, url, level, repeat)
            runs.append(client)
            baseline = bench.baseline(mode, url, level, repeat)
            runs.append(baseline)
            if (client.rows, client.bytes) != (baseline.rows, baseline.bytes):
                raise BenchmarkError(
                    f"the client read {client.rows:,} rows in {client.bytes:,} bytes, the "
                    f"baseline {baseline.rows:,} rows in {baseline.bytes:,} bytes"
                )
            console.print(
                f"{mode} -c {level} #{repeat + 1}: client {client.wall_seconds:.2f} s "
                f"({client.rows_per_second:,.0f} rows/s, {client.cpu_seconds:.2f} CPU s, "
                f"{client.peak_rss_mb:.0f} MB), baseline {baseline.wall_seconds:.2f} s "
                f"({baseline.cpu_seconds:.2f} CPU s); other work {client.other_cpu_seconds:.1f}"
                f" / {baseline.other_cpu_seconds:.1f} CPU s",
                highlight=False,
            )


def summarize(runs: list[Run]) -> dict[str, list[Level]]:
    """Medians and ranges per mode and level, and the client/baseline ratios of the medians."""
    summary: dict[str, list[Level]] = {}
    for mode in dict.fromkeys(run.mode for run in runs):
        levels = []
        for level in dict.fromkeys(run.level for run in runs if run.mode == mode):
            entry = Level(level)
            for kind, target in (("client", entry.client), ("baseline", entry.baseline)):
                chosen = [r for r in runs if (r.mode, r.kind, r.level) == (mode, kind, level)]
                for metric in METRICS:
                    values = [getattr(r, metric) for r in chosen]
                    if None not in values:  # the server's CPU is unknown for a --server URL
                        target[metric] = Spread.of([float(value) for value in values])
            entry.wall_ratio = (
                entry.client["wall_seconds"].median / entry.baseline["wall_seconds"].median
            )
            entry.rate_ratio = (
                entry.client["rows_per_second"].median / entry.baseline["rows_per_second"].median
            )
            levels.append(entry)
        summary[mode] = levels
    return summary


def suggested_level(levels: list[Level]) -> int:
    """The lowest level whose median rows/s is within NEAR_BEST of the best level's."""
    best = max(entry.client["rows_per_second"].median for entry in levels)
    return min(
        entry.level
        for entry in levels
        if entry.client["rows_per_second"].median >= (1 - NEAR_BEST) * best
    )


def _range(spread: Spread, fmt: str) -> str:
    return spread.text(fmt)


def _median(figures: dict[str, Spread], metric: str, fmt: str) -> str:
    """A metric's median, or n/a where it was not measured (a server that is not ours)."""
    return f"{figures[metric].median:{fmt}}" if metric in figures else "n/a"


def render_table(summary: dict[str, list[Level]]) -> None:
    """The summary as a rich table on stderr."""
    table = Table(title="client vs transfer-only baseline: median (min..max)")
    for header in (
        "mode",
        "-c",
        "wall s",
        "rows/s",
        "MB/s",
        "CPU s",
        "server CPU s",
        "peak RSS MB",
        "other CPU s",
        "retries",
        "baseline s",
        "baseline rows/s",
        "wall c/b",
        "rows/s c/b",
    ):
        table.add_column(header, justify="left" if header == "mode" else "right")
    for mode, levels in summary.items():
        for entry in levels:
            c, b = entry.client, entry.baseline
            table.add_row(
                mode,
                str(entry.level),
                _range(c["wall_seconds"], ".2f"),
                _range(c["rows_per_second"], ",.0f"),
                f"{c['mb_per_second'].median:.1f}",
                _range(c["cpu_seconds"], ".1f"),
                _median(c, "server_cpu_seconds", ".1f"),
                _range(c["peak_rss_mb"], ".0f"),
                f"{c['other_cpu_seconds'].median:.1f}",
                f"{c['retries'].max:.0f}",
                _range(b["wall_seconds"], ".2f"),
                f"{b['rows_per_second'].median:,.0f}",
                f"{entry.wall_ratio:.2f}",
                f"{entry.rate_ratio:.2f}",
            )
        table.add_section()
    # Not a terminal (a log file): wide enough that the columns are not cut.
    Console(width=None if sys.stdout.isatty() else 180).print(table)


def markdown(
    summary: dict[str, list[Level]], info: dict[str, Any], command: str, args: argparse.Namespace
) -> str:
    """The summary as Markdown, ready to paste into the README's Performance section."""
    lines = [
        f"Concurrency benchmark, export `{args.export}`: medians (min..max) of each level's runs;",
        "the ratios are client / transfer-only baseline, from the medians.",
        "",
        f"    {command}",
        "",
        machine_line(info),
        f"Server: {'given by --server' if args.server else f'--workers {args.server_workers}'}; "
        f"client: --threads {'one per core' if args.threads is None else args.threads}. "
        "Wall seconds are of the whole process, start-up included, for client and baseline",
        "alike; own s is the client's own timing (its --report), without interpreter start-up",
        "and imports. CPU: the client's user+system seconds, and the server's during the",
        f"client's run; busy is both over {CORES} cores x wall time (1.0: no core ever idle).",
        "Peak RSS: the client process's `ru_maxrss` (one process; its counting threads",
        "included). Other CPU s: what everything else on the machine used during the client's",
        "runs (0 on a quiet machine).",
        "",
        "| mode | -c | wall s | own s | rows/s | MB/s | client CPU s | server CPU s | busy "
        "| peak RSS MB | other CPU s | retries | baseline wall s | baseline CPU s "
        "| wall client/baseline | rows/s client/baseline |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for mode, levels in summary.items():
        for entry in levels:
            c, b = entry.client, entry.baseline
            lines.append(
                f"| {mode} | {entry.level} | {_range(c['wall_seconds'], '.2f')} "
                f"| {c['inner_seconds'].median:.2f} "
                f"| {c['rows_per_second'].median:,.0f} | {c['mb_per_second'].median:.1f} "
                f"| {_range(c['cpu_seconds'], '.1f')} | {_median(c, 'server_cpu_seconds', '.1f')} "
                f"| {_median(c, 'busy', '.2f')} | {_range(c['peak_rss_mb'], '.0f')} "
                f"| {c['other_cpu_seconds'].median:.1f} "
                f"| {c['retries'].max:.0f} | {_range(b['wall_seconds'], '.2f')} "
                f"| {_range(b['cpu_seconds'], '.2f')} "
                f"| {entry.wall_ratio:.2f} | {entry.rate_ratio:.2f} |"
            )
    lines.append("")
    for mode, levels in summary.items():
        lines.append(
            f"- {mode}: the lowest concurrency within {NEAR_BEST:.0%} of the best rows/s "
            f"is {suggested_level(levels)}."
        )
    return "\n".join(lines) + "\n"


COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _nice_step(top: float) -> float:
    """A 1, 2 or 5 times a power of ten step that cuts 0..top into about five ticks."""
    raw = top / 5
    power = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1.0
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


def svg_chart(summary: dict[str, list[Level]], export: str) -> str:
    """Rows/s against concurrency (log2 axis), client solid and baseline dashed, per mode."""
    width, height = 800, 460
    left, right, top, bottom = 90, 240, 50, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    levels = sorted({entry.level for entries in summary.values() for entry in entries})
    peak = max(
        max(entry.client["rows_per_second"].median, entry.baseline["rows_per_second"].median)
        for entries in summary.values()
        for entry in entries
    )
    step = _nice_step(peak * 1.05)
    y_top = step * (int(peak * 1.05 / step) + 1)
    lo, hi = min(levels).bit_length() - 1, max(levels).bit_length() - 1
    span = max(hi - lo, 1)

    def x(level: int) -> float:
        return left + (math.log2(level) - lo) / span * plot_w if hi > lo else left + plot_w / 2

    def y(value: float) -> float:
        return top + plot_h - value / y_top * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left + plot_w / 2}" y="24" text-anchor="middle" font-size="15">'
        f"{escape(export)}: rows/s by concurrency (median of runs)</text>",
    ]
    tick = 0.0
    while tick <= y_top + 1e-9:
        ty = y(tick)
        parts.append(
            f'<line x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}" stroke="#e5e5e5"/>'
        )
        label = f"{tick / 1e6:g}M" if tick and y_top >= 1e6 else f"{tick:,.0f}"
        parts.append(f'<text x="{left - 8}" y="{ty + 4:.1f}" text-anchor="end">{label}</text>')
        tick += step
    for level in levels:
        tx = x(level)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top + plot_h}" x2="{tx:.1f}" y2="{top + plot_h + 5}" '
            f'stroke="black"/>'
        )
        parts.append(
            f'<text x="{tx:.1f}" y="{top + plot_h + 20}" text-anchor="middle">{level}</text>'
        )
    parts += [
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        f'stroke="black"/>',
        f'<text x="{left + plot_w / 2}" y="{height - 15}" text-anchor="middle">'
        f"concurrency (-c, log2 scale)</text>",
        f'<text transform="translate(22 {top + plot_h / 2}) rotate(-90)" '
        f'text-anchor="middle">rows/s</text>',
    ]
    legend_y = top + 10
    for index, (mode, entries) in enumerate(summary.items()):
        color = COLORS[index % len(COLORS)]
        for kind, dash in (("client", ""), ("baseline", ' stroke-dasharray="6 4"')):
            points = " ".join(
                f"{x(e.level):.1f},{y(getattr(e, kind)['rows_per_second'].median):.1f}"
                for e in entries
            )
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"{dash}/>'
            )
            # Markers too, so that a single level still shows: filled client, hollow baseline.
            fill = color if kind == "client" else "white"
            for e in entries:
                parts.append(
                    f'<circle cx="{x(e.level):.1f}" '
                    f'cy="{y(getattr(e, kind)["rows_per_second"].median):.1f}" r="3" '
                    f'fill="{fill}" stroke="{color}"/>'
                )
            lx = left + plot_w + 15
            parts.append(
                f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 30}" y2="{legend_y}" '
                f'stroke="{color}" stroke-width="2"{dash}/>'
            )
            name = "client" if kind == "client" else "transfer only"
            parts.append(f'<text x="{lx + 38}" y="{legend_y + 4}">{escape(mode)}: {name}</text>')
            legend_y += 20
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_results(
    args: argparse.Namespace,
    runs: list[Run],
    summary: dict[str, list[Level]],
    info: dict[str, Any],
    command: str,
) -> None:
    """JSON, Markdown and SVG results under the output directory."""
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"concurrency-{args.export}"
    document = {
        "command": command,
        "machine": info,
        "settings": {
            "export": args.export,
            "levels": args.levels,
            "repeats": args.repeats,
            "modes": list(summary),
            "server_workers": args.server_workers,
            "threads": args.threads,
        },
        "summary": {
            mode: [
                {
                    "level": entry.level,
                    "client": {k: asdict(v) for k, v in entry.client.items()},
                    "baseline": {k: asdict(v) for k, v in entry.baseline.items()},
                    "wall_ratio": entry.wall_ratio,
                    "rows_per_second_ratio": entry.rate_ratio,
                }
                for entry in levels
            ]
            for mode, levels in summary.items()
        },
        "suggested_concurrency": {mode: suggested_level(lv) for mode, lv in summary.items()},
        "runs": [
            {
                **asdict(run),
                "rows_per_second": run.rows_per_second,
                "mb_per_second": run.mb_per_second,
                "busy": run.busy,
            }
            for run in runs
        ],
    }
    chart = svg_chart(summary, args.export)
    # A chart that is not well-formed XML would not render anywhere.
    ElementTree.fromstring(chart)
    written = []
    for suffix, text in (
        (".json", json.dumps(document, indent=2) + "\n"),
        (".md", markdown(summary, info, command, args)),
        (".svg", chart),
    ):
        path = stem.with_suffix(suffix)
        write_atomically(path, text)
        written.append(str(path))
    console.print("wrote " + ", ".join(written))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Client pipeline vs transfer-only baseline across concurrency levels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--export", default="small", help="export to count")
    parser.add_argument(
        "--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="concurrency levels"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per level and kind")
    parser.add_argument(
        "--mode", choices=("both", "generating", "cached"), default="both", help="server modes"
    )
    parser.add_argument("--server", help="use this server (mode 'external') instead of our own")
    parser.add_argument(
        "--server-workers", type=int, default=os.cpu_count() or 1, help="server --workers"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="client --threads (default: one per core)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="the cached mode's --cache-dir, kept (default: a temporary one, warmed each time)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run, at most")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where results are written")
    args = parser.parse_args(argv)
    if args.repeats < 1 or min(args.levels) < 1 or args.server_workers < 1:
        parser.error("--repeats, --levels and --server-workers must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    args.levels = sorted(set(args.levels))
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns the exit code."""
    args = parse_args(argv)
    compile_bytecode()
    command = command_line("concurrency.py", argv)
    info = machine()
    runs: list[Run] = []
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as scratch:
            workdir = Path(scratch)
            bench = Bench(args, workdir)
            if args.server:
                measure_mode(bench, "external", args.server.rstrip("/"), runs)
            else:
                modes = ["generating", "cached"] if args.mode == "both" else [args.mode]
                for mode in modes:
                    cache_dir = None
                    if mode == "cached":
                        cache_dir = args.cache_dir or workdir / "cache"
                        cache_dir.mkdir(parents=True, exist_ok=True)
                    with running_server(args.server_workers, cache_dir) as server:
                        url = server.url
                        console.print(f"{mode}: server at {url} ({args.server_workers} workers)")
                        if cache_dir is not None:
                            warm_cache(bench, url, cache_dir, args.server_workers)
                        bench.server = server
                        measure_mode(bench, mode, url, runs)
                        bench.server = None
    except BenchmarkError as error:
        console.print(f"[red]error:[/] {error}")
        return 1
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130
    info["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    summary = summarize(runs)
    render_table(summary)
    for mode, levels in summary.items():
        console.print(f"{mode}: suggested --concurrency {suggested_level(levels)}")
    write_results(args, runs, summary, info, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
