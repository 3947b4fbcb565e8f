"""The `server` command: a thin shell over `create_app` and `serve`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

# Typer vendors Click (as typer._click) and does not re-export where a value came from.
from typer._click.core import ParameterSource

from ._app import MAX_WORKERS, create_app
from ._bodies import DEFAULT_WRITE_TIMEOUT
from ._exceptions import ExportServerError
from ._faults import MAX_RETRY_AFTER, FaultConfig
from ._process import READY
from ._server import DEFAULT_BACKLOG, MAX_BACKLOG, MAX_FD, control_socket, listening_socket, serve
from ._usage import OneLineErrors, at_most, non_negative_seconds, positive_seconds, probability

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


_fd = at_most(MAX_FD, "file descriptors are C ints")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"server {importlib.metadata.version('export-counter')}")
        raise typer.Exit()


@app.command(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
def run(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Interface to listen on; loopback by default (patient data).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8000,
    fd: Annotated[
        int | None,
        typer.Option(
            "--fd",
            min=0,
            callback=_fd,
            metavar="N",
            help=(
                "Serve on the bound, listening TCP socket inherited as file descriptor N,"
                " instead of --host and --port (for supervisors, and the client's --mock)."
            ),
        ),
    ] = None,
    control_fd: Annotated[
        int | None,
        typer.Option(
            min=0,
            callback=_fd,
            metavar="N",
            help=(
                "Talk to a supervisor (or the client's --mock) on the socket inherited as file"
                " descriptor N: 'ready URL' is written on it once the server accepts requests,"
                " and the server stops when it reads end-of-file there, as when its parent died."
            ),
        ),
    ] = None,
    backlog: Annotated[
        int,
        typer.Option(
            min=1,
            callback=at_most(MAX_BACKLOG, "the kernel takes a C int"),
            help="Listen backlog: connections waiting to be accepted (capped by the kernel at"
            " net.core.somaxconn).",
        ),
    ] = DEFAULT_BACKLOG,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_WORKERS,
            help="Generation worker processes (default: one per CPU available to it).",
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
        typer.Option(
            callback=probability,
            metavar="P",
            help="Probability (0 to 1) that a data stream is cut mid-body.",
        ),
    ] = 0.0,
    error_rate: Annotated[
        float,
        typer.Option(
            callback=probability,
            metavar="P",
            help="Probability (0 to 1) that any request gets a 503.",
        ),
    ] = 0.0,
    latency: Annotated[
        float,
        typer.Option(
            callback=non_negative_seconds,
            metavar="SECONDS",
            help="Seconds to wait before every response.",
        ),
    ] = 0.0,
    write_timeout: Annotated[
        float,
        typer.Option(
            callback=positive_seconds,
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
        int,
        typer.Option(
            min=0,
            callback=at_most(MAX_RETRY_AFTER, "HTTP reads any larger number as that"),
            metavar="SECONDS",
            help="Retry-After of the injected 503 responses.",
        ),
    ] = 1,
    verbose: Annotated[
        bool, typer.Option("-d", "--verbose", help="Log every request and debug details.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "-v", "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Serve the demo, small and large exports of the reference export API.

    Examples:

        server

        server --port 0 --workers 2 --cache-dir /tmp/export-cache

        server --fail-rate 0.2 --error-rate 0.1 --latency 0.05 --chaos-seed 7
    """
    if fd is not None:
        given = [
            f"--{name}"
            for name in ("host", "port")
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
        ]
        if given:
            raise typer.BadParameter(
                f"cannot be combined with {' or '.join(given)}.", param_hint="'--fd'"
            )
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
        # Both checked before anything starts, so that a wrong one is one line and no workers.
        sock = listening_socket(fd) if fd is not None else None
        control = control_socket(control_fd) if control_fd is not None else None
        asyncio.run(
            _serve_until_signal(
                host=None if sock is not None else host,
                port=None if sock is not None else port,
                sock=sock,
                control=control,
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
    host: str | None,
    port: int | None,
    sock: socket.socket | None,
    control: socket.socket | None,
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
    parent: asyncio.StreamWriter | None = None
    watch: asyncio.Task[None] | None = None
    if control is not None:
        reader, parent = await asyncio.open_connection(sock=control)
        watch = asyncio.create_task(_stop_at_end_of_file(reader, stop))

    def announce(url: str) -> None:
        print(f"export server listening on {url}", file=sys.stderr, flush=True)
        if parent is not None:
            parent.write(f"{READY} {url}\n".encode())

    try:
        await serve(
            create_app(
                workers=workers, cache_dir=cache_dir, faults=faults, write_timeout=write_timeout
            ),
            host=host,
            port=port,
            sock=sock,
            stop=stop,
            on_listening=announce,
            access_log=verbose,
            backlog=backlog,
        )
    finally:
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if parent is not None:
            parent.close()
            with contextlib.suppress(ConnectionError):
                await parent.wait_closed()


async def _stop_at_end_of_file(reader: asyncio.StreamReader, stop: asyncio.Event) -> None:
    """Set `stop` once the parent's end of the control socket is closed, or the parent died."""
    # The parent has nothing to say: whatever it sends is read and dropped.
    with contextlib.suppress(ConnectionError):
        while await reader.read(1 << 12):
            pass
    stop.set()


def main() -> None:
    """Entry point of the `server` console script."""
    app(prog_name="server")
