"""The `cli` command: `python -m export_client` and the console script both start here.

Ctrl-C and SIGTERM are deferred from before the CLI's imports (typer, aiohttp, ...), which take
a noticeable part of a second, until the command runs: an interrupt then ends in one `error:`
line and its exit code, not a traceback, nor a crash inside an extension module's import.

Once the command has ended, the process ends at once, without the interpreter's teardown: by
then the result is written, the client closed and its threads joined, and the teardown would
only free the objects of every module imported, one by one, which takes about 35 ms here, as
long as counting a tenth of `small` (the operating system frees the memory at once). What the
interpreter does at exit that matters is done first: the `atexit` handlers run (logging's
closes its handlers; an optional extra may register its own) and the standard streams are
flushed. Where a thread that is not a daemon still runs, or the code is not an int, the
ordinary exit is taken.
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
    import atexit
    import signal
    import threading

    code = 0 if done.code is None else done.code
    if not isinstance(code, int):
        return  # a message as the code: the interpreter prints it
    main = threading.main_thread()
    if any(not thread.daemon for thread in threading.enumerate() if thread is not main):
        return  # the interpreter waits for such a thread, and so must the process
    # What the interpreter runs at exit, first; private, but there since Python 3.0.
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:
        return
    # The result is written and the code decided: a late Ctrl-C or SIGTERM must not turn the
    # last steps into a traceback and another code.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    run_exit_handlers()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None where the descriptor was closed when Python started
                stream.flush()
    except (OSError, ValueError):
        return  # the ordinary exit says what went wrong, as it would have
    os._exit(code)


if __name__ == "__main__":
    main()
