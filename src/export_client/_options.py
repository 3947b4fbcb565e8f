"""The options of `cli`, with their help: what the command's signature is made of.

Each is an `Annotated` type for typer; the command (`_cli.py`) names them in its signature.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any

import typer

from . import __version__
from ._cluster import INSTALL_HINT, ClusterAddress, dask_installed
from ._counting import COUNTING_CORE
from ._http import check_server_url
from ._rate import parse_rate
from ._stats import parse_range

__all__ = ["SERVER_ENV", "Format"]

SERVER_ENV = "EXPORT_SERVER_URL"


class Format(StrEnum):
    json = "json"
    table = "table"
    csv = "csv"


def _usage(check: Callable[[Any], object]) -> Callable[[Any], Any]:
    """`check`'s value (the one given where `check` returns None), its ValueError a usage
    error: a typer callback or parser."""

    def checked(value: Any) -> Any:
        if value is None:
            return None
        try:
            result = check(value)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
        return value if result is None else result

    return checked


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cli {__version__} (counting core: {COUNTING_CORE})")
        raise typer.Exit()


def _seconds(name: str, low: float, text: str) -> Any:
    return typer.Option(name, min=low, callback=_finite, metavar="SECONDS", help=text)


ExportArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="EXPORT_ID",
        help="The export to count (demo, small, large).",
        show_default=False,
    ),
]

ExportOption = Annotated[
    str | None,
    typer.Option(
        "-e",
        "--export-id",
        "--export_id",
        metavar="ID",
        help="The export, as an option.",
        show_default=False,
    ),
]

Server = Annotated[
    str,
    typer.Option(
        "-s",
        "--server",
        envvar=SERVER_ENV,
        callback=_usage(check_server_url),
        metavar="URL",
        help=f"Base URL of the export server (also ${SERVER_ENV}).",
    ),
]

Mock = Annotated[
    bool,
    typer.Option(
        "--mock", help="Start the project's own server on a free loopback port for this run."
    ),
]

OutputFile = Annotated[
    str | None,
    typer.Option(
        "-o",
        "--output",
        metavar="FILE",
        help="Write the result to FILE instead of stdout: a regular file is replaced "
        "atomically (through a symlink, its target), a device or FIFO written in place; "
        "- is stdout.",
        show_default=False,
    ),
]

FormatOption = Annotated[
    Format,
    typer.Option("-f", "--format", metavar="FORMAT", help="json, table (for people) or csv."),
]

ReportFile = Annotated[
    str | None,
    typer.Option(
        "--report",
        metavar="FILE",
        help="Also write the run's report to FILE as JSON: rows, bytes, seconds, retries, "
        "and every download's figures (for scripts and benchmarks).",
        show_default=False,
    ),
]

Concurrency = Annotated[
    int,
    typer.Option(
        "-c",
        "--concurrency",
        min=1,
        metavar="N",
        help="Downloads streamed at once (with a scheduler's --cluster: its workers' threads).",
    ),
]

Retries = Annotated[
    int,
    typer.Option(
        "--retries",
        min=0,
        metavar="N",
        help="Retries per request and per download after a failure.",
    ),
]

Backoff = Annotated[
    float,
    _seconds(
        "--backoff",
        0.0,
        "Seconds before the first retry, doubling for each next one (with jitter); a "
        "server's Retry-After takes precedence.",
    ),
]

Timeout = Annotated[
    float,
    _seconds("--timeout", 0.001, "Seconds to wait for a connection or for the next bytes."),
]

SpeedLimit = Annotated[
    float,
    typer.Option(
        "--speed-limit",
        min=0.0,
        callback=_finite,
        metavar="BYTES",
        help="Bytes per second below which a stream counts as too slow (see --speed-time); "
        "0 turns the floor off.",
    ),
]

SpeedTime = Annotated[
    float,
    _seconds(
        "--speed-time",
        0.001,
        "Seconds a stream may stay below --speed-limit before it is abandoned and retried.",
    ),
]

Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        metavar="N",
        help="Threads that count blocks (default: one per core).",
        show_default=False,
    ),
]

Strict = Annotated[
    bool, typer.Option("--strict", help="Fail on any malformed row instead of skipping it.")
]

ListOption = Annotated[
    bool,
    typer.Option("--list", help="List the exports, or with an export id its downloads (JSON)."),
]

TimeOption = Annotated[
    bool, typer.Option("-t", "--time", help="A one-line summary with timing on stderr.")
]

Quiet = Annotated[
    bool,
    typer.Option(
        "-q",
        "--quiet",
        help="No progress or retry notices on stderr; warnings about the data are still printed.",
    ),
]

Verbose = Annotated[
    bool,
    typer.Option(
        "-d", "--verbose", help="Per-download details, malformed row examples, tracebacks."
    ),
]

Version = Annotated[
    bool,
    typer.Option(
        "-v", "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
]

StatsOption = Annotated[
    bool,
    typer.Option(
        "--stats",
        help="Statistics per patient and event type instead of counts: count, mean, min, max, "
        "anomalies and latency.",
    ),
]


def _ranges(values: list[str]) -> None:
    for value in values:
        parse_range(value)


NormalRange = Annotated[
    list[str] | None,
    typer.Option(
        "--normal-range",
        metavar="TYPE=LO:HI",
        callback=_usage(_ranges),
        help="With --stats: values of TYPE outside LO..HI are anomalies (repeatable; adds to or "
        "overrides heart_rate=40:180, spo2=85:100, bp_sys=90:200, bp_dia=60:120).",
        show_default=False,
    ),
]

LimitRate = Annotated[
    float | None,
    typer.Option(
        "--limit-rate",
        metavar="BYTES",
        parser=_usage(parse_rate),
        help="Read at most BYTES per second over all downloads, as curl's --limit-rate: 20M, "
        "500K, 65536 (K, M and G are 1024-based). With --cluster, each worker process is "
        "limited on its own.",
        show_default=False,
    ),
]


def _cluster(value: str) -> None:
    ClusterAddress.parse(value)
    if not dask_installed():
        raise ValueError(f"--cluster needs Dask, an optional extra: {INSTALL_HINT}")


Cluster = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        metavar="ADDRESS",
        callback=_usage(_cluster),
        help="Count each download as a Dask task: on the scheduler at ADDRESS "
        "(tcp://host:8786), or on N worker processes started for this run (local:N; local: "
        "one per core). The workers must reach the server themselves. Needs the extra "
        "(uv sync --extra dask).",
        show_default=False,
    ),
]
