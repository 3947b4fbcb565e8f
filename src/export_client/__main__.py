"""The `cli` command: `python -m export_client` and the console script both start here.

Ctrl-C and SIGTERM are deferred from before the CLI's imports (typer, aiohttp, ...), which take
a noticeable part of a second, until the command runs: an interrupt then ends in one `error:`
line and its exit code, not a traceback, nor a crash inside an extension module's import.

Once the command has ended, the process ends at once, without the interpreter's teardown: by
then the result is written, the client closed and its threads joined, and the teardown would
only free the objects of every module imported, one by one, which takes longer than the
client's own work on a small export (about 40 ms here; the operating system frees the memory
at once). Only the standard streams need flushing first, and logging's handlers closing.
"""

from __future__ import annotations

import os
import sys

from ._signals import defer_interrupts


def main() -> None:
    """Entry point of the `cli` script."""
    defer_interrupts()  # resumed by the command (_cli.cli), which reports what came meanwhile
    from ._cli import main as run_cli

    try:
        run_cli()
    except SystemExit as done:
        _exit_now(done)
        raise


def _exit_now(done: SystemExit) -> None:
    """Ends the process with `done`'s code; returns (for the ordinary exit) if it cannot."""
    code = 0 if done.code is None else done.code
    if not isinstance(code, int):
        return  # a message as the code: the interpreter prints it
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None where the descriptor was closed when Python started
                stream.flush()
    except (OSError, ValueError):
        return  # the ordinary exit says what went wrong, as it would have
    if "logging" in sys.modules:  # what the one handler logging registers with atexit does
        sys.modules["logging"].shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
