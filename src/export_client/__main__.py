"""The `cli` command: `python -m export_client` and the console script both start here.

Ctrl-C and SIGTERM are handled from before the CLI's imports (typer, aiohttp, ...), which take
a noticeable part of a second: an interrupt then ends in one `error:` line, not a traceback.
"""

from __future__ import annotations

import sys

from ._signals import DeferredInterrupts, handle_sigterm, signal_stop


def main() -> None:
    """Entry point of the `cli` script."""
    with DeferredInterrupts() as deferred:
        from ._cli import main as run_cli
    if deferred.received:
        message, code = signal_stop(deferred.received[0])
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(code)
    handle_sigterm()
    run_cli()


if __name__ == "__main__":
    main()
