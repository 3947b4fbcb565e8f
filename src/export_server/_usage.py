"""The `server` command's conventions: usage errors on one line, bare flags, checked numbers."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import typer

# Typer vendors Click (as typer._click) and re-exports only some of its exceptions; the base
# classes are needed to report every usage error on one line.
from typer._click import Context, Parameter
from typer._click.exceptions import ClickException, UsageError
from typer.core import TyperCommand, TyperOption

__all__ = ["OneLineErrors", "at_most", "non_negative_seconds", "positive_seconds", "probability"]


class OneLineErrors(TyperCommand):
    """Reports a usage error as one `error:` line and exit code 2, like every other error.

    Its help shows a flag without a type: typer's rich help would print `<bool>` beside it.
    """

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False  # errors come back here, to be shown our way
        try:
            code = super().main(*args, **kwargs)
        except ClickException as error:
            hint = " (see server --help)" if isinstance(error, UsageError) else ""
            typer.echo(f"error: {error.format_message()}{hint}", err=True)
            sys.exit(error.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: Context) -> Any:
        # typer turns a KeyboardInterrupt in the command into a silent exit 130. Once it serves,
        # the server stops cleanly on SIGINT instead; this is a Ctrl-C before that.
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None

    def get_params(self, ctx: Context) -> list[Parameter]:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag:
                param.metavar = ""  # what the help shows as the option's type
        return params


def probability(value: float) -> float:
    """A probability, from 0 to 1; raises typer.BadParameter."""
    if not 0.0 <= value <= 1.0:  # false for NaN as well
        raise typer.BadParameter("must be between 0 and 1.")
    return value


def non_negative_seconds(value: float) -> float:
    """A finite number of seconds, 0 or more; raises typer.BadParameter."""
    if not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter("must be a finite number of seconds, 0 or more.")
    return value


def positive_seconds(value: float) -> float:
    """A finite number of seconds above 0; raises typer.BadParameter."""
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter("must be a finite number of seconds above 0.")
    return value


def at_most(limit: int, why: str) -> Callable[[int | None], int | None]:
    """A check that refuses a number above `limit`, for the reason `why`.

    A callback rather than typer's `max`, whose range in the help would show a number that
    nobody needs to know.
    """

    def check(value: int | None) -> int | None:
        if value is not None and value > limit:
            raise typer.BadParameter(f"must be at most {limit}: {why}.")
        return value

    return check
