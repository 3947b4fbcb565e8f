"""`cli`: count an export's records from the command line, a thin shell over `ExportClient`."""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NoReturn

import orjson
import typer

# Typer vendors Click (as typer._click) and re-exports only some of its exceptions;
# the base classes are needed to report every usage error on one line.
from typer._click.core import ParameterSource
from typer._click.exceptions import ClickException, UsageError
from typer.core import TyperCommand

from ._client import ExportClient
from ._cluster import ClusterAddress
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
from ._formats import render
from ._mock import mock_server
from ._options import (
    Backoff,
    Cluster,
    Concurrency,
    ExportArgument,
    ExportOption,
    Format,
    FormatOption,
    LimitRate,
    ListOption,
    Mock,
    NormalRange,
    OutputFile,
    Quiet,
    ReportFile,
    Retries,
    Server,
    SpeedLimit,
    SpeedTime,
    StatsOption,
    Strict,
    Threads,
    TimeOption,
    Timeout,
    Verbose,
    Version,
)
from ._output import Output, OutputError
from ._report import details, summary, warnings
from ._results import ExportReport
from ._retry import RetryPolicy
from ._signals import resume_interrupts, stop_message
from ._stats import parse_range
from ._terminal import clean, progress_for

# "\b" keeps click from rewrapping the paragraph that follows it.
EXAMPLES = """Examples:

\b
  cli demo --mock              count `demo` on a mock server started for this run
  cli small -o counts.json -t  to a file, with a summary line on stderr
  cli small --format table     a table for people; --format csv for spreadsheets
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
            hint = f" (see {self.name} --help)" if isinstance(error, UsageError) else ""
            typer.echo(f"error: {clean(error.format_message(), 2000)}{hint}", err=True)
            sys.exit(error.exit_code)
        except typer.Abort as abort:
            message, code = stop_message(abort)
            typer.echo(f"error: {message}", err=True)
            sys.exit(code)
        except Exception as error:  # a bug, in parsing or presenting: still one line
            if {"-d", "--verbose"} & set(sys.argv[1:]):
                traceback.print_exception(error, file=sys.stderr)
            typer.echo(f"error: unexpected {type(error).__name__}: {error}", err=True)
            sys.exit(1)
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


app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no rich import, no boxes
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command(cls=OneLineErrors, epilog=EXAMPLES)
def cli(
    ctx: typer.Context,
    export_id: ExportArgument = None,
    export_option: ExportOption = None,
    server: Server = DEFAULT_SERVER,
    mock: Mock = False,
    output: OutputFile = None,
    format_: FormatOption = Format.json,
    report_file: ReportFile = None,
    concurrency: Concurrency = DEFAULT_CONCURRENCY,
    retries: Retries = DEFAULT_RETRIES,
    backoff: Backoff = DEFAULT_BACKOFF,
    timeout: Timeout = DEFAULT_TIMEOUT,
    speed_limit: SpeedLimit = DEFAULT_SPEED_LIMIT,
    speed_time: SpeedTime = DEFAULT_SPEED_TIME,
    threads: Threads = None,
    limit_rate: LimitRate = None,
    cluster: Cluster = None,
    strict: Strict = False,
    stats: StatsOption = False,
    normal_range: NormalRange = None,
    list_: ListOption = False,
    time_: TimeOption = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    version: Version = False,
) -> None:
    """Count the records of an export per patient and event type.

    Every download of the export is streamed concurrently, counted, and verified against the
    row count its metadata announces; failed streams are retried. The result goes to stdout
    (or --output); progress, warnings and errors go to stderr.

    Exit codes: 0 success; 1 failure (no result is printed and no file touched); 2 usage error,
    an unknown export included; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
    """
    resume_interrupts()  # deferred by the entry point while the imports ran
    chosen = _chosen_export(export_id, export_option, list_)
    if normal_range and not stats:
        raise UsageError("--normal-range needs --stats.")
    if mock and ctx.get_parameter_source("server") == ParameterSource.COMMANDLINE:
        raise UsageError("--mock starts its own server: give --mock or --server, not both.")
    reached = "http://127.0.0.1" if mock else server  # --mock's server is on loopback
    if cluster is not None and not ClusterAddress.parse(cluster).reaches(reached):
        where = "--mock's server" if mock else f"The server at {server}"
        raise UsageError(f"{where} is on this machine's loopback, out of a remote cluster's reach.")
    try:
        # Before anything is downloaded: a result that cannot be written is not worth making.
        destination = Output.at(output) if output is not None else Output.at("-")
        report_destination = Output.at(report_file) if report_file is not None else None
    except OutputError as error:
        raise UsageError(str(error)) from None
    if report_destination is not None and report_destination.descriptor == 1:
        raise UsageError("--report cannot go to stdout, which carries the result.")
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
                stats=stats,
                normal_ranges=dict(map(parse_range, normal_range or [])),
                threads=threads,
                limit_rate=limit_rate,
                cluster=cluster,
                progress=progress_for(sys.stderr, quiet=quiet, label=chosen or ""),
            )
            if list_:
                _emit(asyncio.run(_listing(client, chosen)), destination)
                return
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
    _present(report, destination, format_.value, time_=time_, verbose=verbose)
    if report_destination is not None:
        document = {**report.to_dict(), "counting_core": COUNTING_CORE}
        _emit(orjson.dumps(document, option=orjson.OPT_INDENT_2), report_destination)


def _chosen_export(argument: str | None, option: str | None, listing: bool) -> str | None:
    if argument and option and argument != option:
        raise UsageError(f"Two different exports given: {argument!r} and {option!r}.")
    chosen = argument or option
    if not chosen and not listing:
        raise UsageError("Missing export id: give one, or --list to see them.")
    return chosen


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


def _present(
    report: ExportReport, output: Output, format_name: str, *, time_: bool, verbose: bool
) -> None:
    # Warnings say the result is not all the data: never silenced, not even by --quiet.
    for warning in warnings(report):
        typer.echo(f"warning: {warning}", err=True)
    if verbose:
        for line in details(report):
            typer.echo(line, err=True)
    _emit(render(report, format_name), output)
    if time_:
        typer.echo(summary(report), err=True)


def _emit(document: bytes, output: Output) -> None:
    try:
        output.write(document)
    except BrokenPipeError:
        # The reader left (`cli ... | head`): nothing more to tell it. Quietly, as other
        # tools end, and without a traceback from the interpreter's own flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    except OSError as error:
        if output.descriptor == 1:  # stdout closed (`cli demo >&-`): nowhere to say more
            raise typer.Exit(1) from None
        _fail(ExportClientError(f"Cannot write {output.path}: {error.strerror}."), False, code=1)


def _fail(
    error: BaseException,
    verbose: bool,
    *,
    code: int,
    bug: bool = False,
    message: str | None = None,
) -> NoReturn:
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    if message is None:
        if bug:
            message = f"unexpected {type(error).__name__}: {error} (run with --verbose for details)"
        else:
            message = str(error)
    # Messages quote the server's words: its control characters must not reach the terminal.
    typer.echo(f"error: {clean(message, 2000)}", err=True)
    raise typer.Exit(code)


def main() -> None:
    """Entry point of the `cli` script."""
    app()
