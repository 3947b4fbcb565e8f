"""`cli`: count an export's records from the command line."""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from contextlib import AbstractContextManager, nullcontext
from typing import Annotated, Any, NoReturn

import orjson
import typer

# Typer vendors Click (as typer._click) and re-exports only some of its exceptions;
# the base classes are needed to report every usage error on one line.
from typer._click.exceptions import ClickException, UsageError
from typer.core import TyperCommand

from . import __version__
from ._client import ExportClient
from ._counting import COUNTING_CORE
from ._defaults import (
    DEFAULT_BACKOFF,
    DEFAULT_CONCURRENCY,
    DEFAULT_RETRIES,
    DEFAULT_SERVER,
    DEFAULT_SPEED_LIMIT,
    DEFAULT_SPEED_TIME,
    DEFAULT_TIMEOUT,
)
from ._exceptions import ExportClientError, ServerUnreachableError, UnknownExportError
from ._http import check_server_url
from ._mock import mock_server
from ._output import Output, OutputError
from ._report import details, summary, warnings
from ._results import ExportReport
from ._retry import RetryPolicy
from ._signals import resume_interrupts, stop_message
from ._terminal import progress_for

SERVER_ENV = "EXPORT_SERVER_URL"

EXAMPLES = """
Examples:

  cli demo --mock              count `demo` on a mock server started for this run

  cli small -s http://localhost:8000 -o small.json -t

  cli --list                   the exports a server offers (JSON)

  cli large --list             the downloads of `large` with their metadata
"""


class OneLineErrors(TyperCommand):
    """Reports a usage error as one `error:` line and exit code 2, like every other error."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False  # errors come back here, to be shown our way
        try:
            code = super().main(*args, **kwargs)
        except ClickException as error:
            hint = " (see cli --help)" if isinstance(error, UsageError) else ""
            typer.echo(f"error: {error.format_message()}{hint}", err=True)
            sys.exit(error.exit_code)
        except typer.Abort as abort:
            message, code = stop_message(abort)
            typer.echo(f"error: {message}", err=True)
            sys.exit(code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        # typer turns a KeyboardInterrupt in the command into a silent exit 130, and so would
        # SIGTERM's: say what stopped the run, with its own code.
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as interrupt:
            message, code = stop_message(interrupt)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code) from None


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _server_url(value: str) -> str:
    try:
        check_server_url(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    return value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cli {__version__} (counting core: {COUNTING_CORE})")
        raise typer.Exit()


@app.command(cls=OneLineErrors, epilog=EXAMPLES)
def cli(
    export_id: Annotated[
        str | None, typer.Argument(help="The export to count (demo, small, large, ...).")
    ] = None,
    export_option: Annotated[
        str | None,
        typer.Option(
            "-e", "--export_id", help="The export to count, as an option.", show_default=False
        ),
    ] = None,
    server: Annotated[
        str,
        typer.Option(
            "-s",
            "--server",
            envvar=SERVER_ENV,
            callback=_server_url,
            help="Base URL of the export server.",
        ),
    ] = DEFAULT_SERVER,
    mock: Annotated[
        bool,
        typer.Option(
            "--mock", help="Start the project's own server on a free loopback port for this run."
        ),
    ] = False,
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FILE",
            help="Write the JSON to FILE instead of stdout: a regular file is replaced "
            "atomically (through a symlink, its target), a device or FIFO written in place; "
            "- is stdout.",
            show_default=False,
        ),
    ] = None,
    report_file: Annotated[
        str | None,
        typer.Option(
            "--report",
            metavar="FILE",
            help="Also write the run's report to FILE as JSON: rows, bytes, seconds, retries, "
            "and every download's figures (for scripts and benchmarks).",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("-c", "--concurrency", min=1, help="Downloads streamed at once.")
    ] = DEFAULT_CONCURRENCY,
    retries: Annotated[
        int,
        typer.Option(
            "--retries", min=0, help="Retries per request and per download after a failure."
        ),
    ] = DEFAULT_RETRIES,
    backoff: Annotated[
        float,
        typer.Option(
            "--backoff",
            min=0.0,
            help="Seconds before the first retry, doubling for each next one (with jitter); "
            "a server's Retry-After takes precedence.",
        ),
    ] = DEFAULT_BACKOFF,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.001, help="Seconds to wait for a connection or for the next bytes."
        ),
    ] = DEFAULT_TIMEOUT,
    speed_limit: Annotated[
        float,
        typer.Option(
            "--speed-limit",
            min=0.0,
            help="Bytes per second below which a stream counts as too slow (see --speed-time); "
            "0 turns the floor off.",
        ),
    ] = DEFAULT_SPEED_LIMIT,
    speed_time: Annotated[
        float,
        typer.Option(
            "--speed-time",
            min=0.001,
            help="Seconds a stream may stay below --speed-limit before it is abandoned and "
            "retried.",
        ),
    ] = DEFAULT_SPEED_TIME,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="Threads that count blocks. Default: one per core.",
            show_default=False,
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on any malformed row instead of skipping it.")
    ] = False,
    list_: Annotated[
        bool,
        typer.Option("--list", help="List the exports, or with an export id its downloads (JSON)."),
    ] = False,
    time_: Annotated[
        bool, typer.Option("-t", "--time", help="Print a one-line summary with timing on stderr.")
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "-q",
            "--quiet",
            help="No progress on stderr; warnings about the data (malformed rows, surprises) "
            "are still printed.",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "-d", "--verbose", help="Per-download details, malformed row examples, tracebacks."
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "-v", "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Count the records of an export per patient and event type, and print them as JSON.

    Every download of the export is streamed concurrently, counted, and verified
    against the row count its metadata announces; failed streams are retried.
    The JSON goes to stdout (or --output); progress, warnings and errors go to stderr.
    Exit codes: 0 success, 1 failure, 2 usage error (an unknown export included).
    """
    resume_interrupts()  # deferred by the entry point while the imports ran
    if export_id and export_option and export_id != export_option:
        raise typer.BadParameter(
            f"two different exports given: {export_id!r} and {export_option!r}",
            param_hint="EXPORT_ID / --export_id",
        )
    chosen = export_id or export_option
    if not chosen and not list_:
        raise UsageError("Missing export id: give one, or --list to see them.")
    try:
        # Before anything is downloaded: a result that cannot be written is not worth making.
        destination = Output.at(output) if output is not None else None
        report_destination = Output.at(report_file) if report_file is not None else None
    except OutputError as error:
        raise UsageError(str(error)) from None
    if report_file == "-" or (report_destination and report_destination.descriptor == 1):
        raise UsageError("--report cannot go to stdout, which carries the result.")
    progress = progress_for(sys.stderr, quiet=quiet, label=chosen or "")
    if verbose:
        typer.echo(f"counting core: {COUNTING_CORE}", err=True)
    server_context: AbstractContextManager[str] = (
        mock_server(show_log=verbose) if mock else nullcontext(server)
    )
    try:
        with server_context as url:
            client = ExportClient(
                url,
                concurrency=concurrency,
                retry=RetryPolicy(retries=retries, base_delay=backoff),
                timeout=timeout,
                speed_limit=speed_limit,
                speed_time=speed_time,
                strict=strict,
                threads=threads,
                progress=progress,
            )
            if list_:
                listing = asyncio.run(_listing(client, chosen))
            else:
                assert chosen is not None
                report = asyncio.run(_count(client, chosen))
    except UnknownExportError as error:
        _fail(error, verbose, code=2)
    except ServerUnreachableError as error:
        hint = "Start it with `uv run server`, point --server at it, or use --mock."
        _fail(error, verbose, code=1, message=f"{error} {hint}")
    except ExportClientError as error:
        _fail(error, verbose, code=1)
    except Exception as error:
        _fail(error, verbose, code=1, bug=True)
    if list_:
        _emit(listing, destination)
    else:
        _present(report, output=destination, time_=time_, verbose=verbose)
        if report_destination is not None:
            document = {**report.to_dict(), "counting_core": COUNTING_CORE}
            _emit(orjson.dumps(document, option=orjson.OPT_INDENT_2), report_destination)


async def _count(client: ExportClient, export_id: str) -> ExportReport:
    async with client:
        return await client.count(export_id)


async def _listing(client: ExportClient, export_id: str | None) -> bytes:
    async with client:
        if export_id:
            downloads = await client.downloads(export_id)
            document: dict[str, Any] = {
                "id": export_id,
                "rows": sum(download.rows for download in downloads),
                "downloads": [download.to_dict() for download in downloads],
            }
        else:
            document = {"export_ids": await client.export_ids()}
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def _present(report: ExportReport, *, output: Output | None, time_: bool, verbose: bool) -> None:
    # Warnings say the result is not all the data: never silenced, not even by --quiet.
    for warning in warnings(report):
        typer.echo(f"warning: {warning}", err=True)
    if verbose:
        for line in details(report):
            typer.echo(line, err=True)
    _emit(report.to_json(), output)
    if time_:
        typer.echo(summary(report), err=True)


def _emit(document: bytes, output: Output | None) -> None:
    try:
        (output or Output.at("-")).write(document)
    except BrokenPipeError:
        # The reader left (`cli ... | head`): nothing more to tell it, and no traceback
        # from the interpreter's own flush at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    except OSError as error:
        where = output.path if output is not None else "stdout"
        _fail(ExportClientError(f"Cannot write {where}: {error.strerror}."), False, code=1)


def _fail(
    error: BaseException | None,
    verbose: bool,
    *,
    code: int,
    bug: bool = False,
    message: str | None = None,
) -> NoReturn:
    if verbose and error is not None:
        traceback.print_exception(error, file=sys.stderr)
    if message is None:
        if bug:
            message = f"unexpected {type(error).__name__}: {error} (run with --verbose for details)"
        else:
            message = str(error)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def main() -> None:
    """Entry point of the `cli` script."""
    app()
