"""Ctrl-C and SIGTERM: both stop a run cleanly, each with its own exit code.

The entry point uses this before it imports the CLI, so it imports nothing but `signal`:
every millisecond before the handlers are in place is a window for a traceback.
"""

from __future__ import annotations

import signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType, TracebackType

# 128 + the signal's number, as shells report a process ended by it.
_STOPS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM; raised like Ctrl-C's KeyboardInterrupt, so cleanup is the same."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Cleanup (closing sessions, stopping a --mock server) must not be cut short by a
    # second SIGTERM; SIGKILL remains for a process that does not stop.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


def handle_sigterm() -> None:
    """Make SIGTERM raise `Terminated` in the main thread."""
    signal.signal(signal.SIGTERM, _terminate)


class DeferredInterrupts:
    """Inside, Ctrl-C and SIGTERM are noted in `received` instead of raising.

    For imports: an exception raised inside an extension module's initialisation can crash
    the interpreter (orjson's did, with a segmentation fault), so the signal waits until the
    imports are done.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def __enter__(self) -> DeferredInterrupts:
        self._previous = {signum: signal.signal(signum, self._note) for signum in _STOPS}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


_deferred: DeferredInterrupts | None = None


def defer_interrupts() -> None:
    """Defers Ctrl-C and SIGTERM until `resume_interrupts`: for the entry point."""
    global _deferred
    if _deferred is None:
        _deferred = DeferredInterrupts().__enter__()


def resume_interrupts() -> None:
    """Ends a deferral, if any: Ctrl-C and SIGTERM raise again, and one that came meanwhile
    is raised now (KeyboardInterrupt or Terminated), where the CLI can report it."""
    global _deferred
    if _deferred is None:
        return
    deferred, _deferred = _deferred, None
    deferred.__exit__(None, None, None)
    handle_sigterm()
    if deferred.received:
        raise Terminated if deferred.received[0] == signal.SIGTERM else KeyboardInterrupt


def signal_stop(signum: int) -> tuple[str, int]:
    """The `error:` text and exit code of a run stopped by the signal `signum`."""
    return _STOPS[signal.Signals(signum)]


def stop_message(interrupt: BaseException | None) -> tuple[str, int]:
    """The `error:` text and exit code of a run stopped by `interrupt` (or what it caused)."""
    while interrupt is not None and not isinstance(interrupt, KeyboardInterrupt):
        interrupt = interrupt.__cause__ or interrupt.__context__
    return signal_stop(signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
