"""The `server` command: a thin shell over `create_app` and `serve`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from ._app import DEFAULT_WRITE_TIMEOUT, create_app
from ._exceptions import ExportServerError
from ._faults import FaultConfig
from ._server import DEFAULT_BACKLOG, serve

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False)


def _positive(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter("must be more than 0.")
    return value


def _rate(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter("must be between 0 and 1.")
    return value


@app.command()
def run(
    host: Annotated[
        str, typer.Option(help="Interface to listen on; loopback by default (patient data).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8000,
    backlog: Annotated[
        int,
        typer.Option(
            min=1,
            help="Listen backlog: connections waiting to be accepted (capped by the kernel at"
            " net.core.somaxconn).",
        ),
    ] = DEFAULT_BACKLOG,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Generation worker processes (default: one per CPU available to it)."
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help=(
                "Cache complete bodies here and serve later requests from disk, in large chunks"
                " not cut at line ends."
            ),
        ),
    ] = None,
    fail_rate: Annotated[
        float,
        typer.Option(callback=_rate, help="Probability that a data stream is cut mid-body."),
    ] = 0.0,
    error_rate: Annotated[
        float,
        typer.Option(callback=_rate, help="Probability that any request gets a 503."),
    ] = 0.0,
    latency: Annotated[
        float, typer.Option(min=0.0, help="Seconds to wait before every response.")
    ] = 0.0,
    write_timeout: Annotated[
        float,
        typer.Option(
            callback=_positive,
            metavar="SECONDS",
            help=(
                "Cut off a client that leaves the next piece of a body (at most 4 MiB) untaken"
                " this long; its generation job and cache file are dropped."
            ),
        ),
    ] = DEFAULT_WRITE_TIMEOUT,
    chaos_seed: Annotated[
        int, typer.Option(help="Seed of the fault injection, to replay a faulty run exactly.")
    ] = 0,
    retry_after: Annotated[
        int, typer.Option(min=0, help="Retry-After seconds of the injected 503 responses.")
    ] = 1,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log every request and debug details.")
    ] = False,
) -> None:
    """Serve the demo, small and large exports of the reference export API.

    Examples:

        server

        server --port 0 --workers 2 --cache-dir /tmp/export-cache

        server --fail-rate 0.2 --error-rate 0.1 --latency 0.05 --chaos-seed 7
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    faults = FaultConfig(
        fail_rate=fail_rate,
        error_rate=error_rate,
        latency=latency,
        seed=chaos_seed,
        retry_after=retry_after,
    )
    try:
        asyncio.run(
            _serve_until_signal(
                host=host,
                port=port,
                backlog=backlog,
                workers=workers,
                cache_dir=cache_dir,
                faults=faults,
                write_timeout=write_timeout,
                verbose=verbose,
            )
        )
    except ExportServerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


async def _serve_until_signal(
    *,
    host: str,
    port: int,
    backlog: int,
    workers: int | None,
    cache_dir: Path | None,
    faults: FaultConfig,
    write_timeout: float,
    verbose: bool,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def announce(url: str) -> None:
        print(f"export server listening on {url}", file=sys.stderr, flush=True)

    await serve(
        create_app(
            workers=workers, cache_dir=cache_dir, faults=faults, write_timeout=write_timeout
        ),
        host=host,
        port=port,
        stop=stop,
        on_listening=announce,
        access_log=verbose,
        backlog=backlog,
    )


def main() -> None:
    """Entry point of the `server` console script."""
    app(prog_name="server")
