"""The `cli` command: `python -m export_client` and the console script both start here.

Ctrl-C and SIGTERM are deferred from before the CLI's imports (typer, aiohttp, ...), which take
a noticeable part of a second, until the command runs: an interrupt then ends in one `error:`
line and its exit code, not a traceback, nor a crash inside an extension module's import.
"""

from __future__ import annotations

from ._signals import defer_interrupts


def main() -> None:
    """Entry point of the `cli` script."""
    defer_interrupts()  # resumed by the command (_cli.cli), which reports what came meanwhile
    from ._cli import main as run_cli

    run_cli()


if __name__ == "__main__":
    main()
