"""Progress for people, on stderr: a line that updates itself on a terminal, else one line
per event."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

from ._metadata import DownloadInfo
from ._progress import NoProgress, ProgressListener, Retry

__all__ = ["PlainProgress", "TerminalProgress", "clean", "progress_for"]

_SHOWN_CHARS = 80


def clean(text: str, limit: int = _SHOWN_CHARS) -> str:
    """Text from the server as messages show it: control characters escaped, long text cut."""
    # repr() escapes every control character (and nothing printable); its quotes go.
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def progress_for(stream: TextIO, *, quiet: bool, label: str = "") -> ProgressListener:
    """The progress a run shows on `stream`: none with quiet, rich on a terminal, else lines."""
    if quiet:
        return NoProgress()
    if stream.isatty():
        return TerminalProgress(stream)
    return PlainProgress(stream)


class PlainProgress(NoProgress):
    """Retries as plain lines, one per event: for a log or a pipe rather than a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def retrying(self, retry: Retry) -> None:
        self._stream.write(f"{retry_line(retry)}\n")
        self._stream.flush()


def retry_line(retry: Retry) -> str:
    return f"retrying {clean(retry.what)} in {retry.delay:.1f}s: {clean(retry.reason, 300)}"


class TerminalProgress(NoProgress):
    """One self-updating line on a terminal: rows of the announced total, rate, time left."""

    def __init__(self, stream: TextIO, *, interval: float = 0.2) -> None:
        self._stream = stream
        self._interval = interval
        self._total = 0
        self._rows = 0
        self._in_flight: set[str] = set()
        self._retries = 0
        self._started_at = time.monotonic()
        self._drawn_at = 0.0
        self._width = 0

    def started(self, downloads: Sequence[DownloadInfo]) -> None:
        self._total = sum(download.rows for download in downloads)
        self._started_at = time.monotonic()
        self._draw(force=True)

    def download_started(self, download_id: str) -> None:
        self._in_flight.add(download_id)

    def counted(self, download_id: str, rows: int) -> None:
        self._rows += rows
        self._draw()

    def retrying(self, retry: Retry) -> None:
        self._rows -= retry.rows
        self._retries += 1
        self._clear()
        self._stream.write(f"{retry_line(retry)}\n")
        self._draw(force=True)

    def download_finished(self, download_id: str) -> None:
        self._in_flight.discard(download_id)
        self._draw()

    def finished(self) -> None:
        self._clear()

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn_at < self._interval:
            return
        self._drawn_at = now
        elapsed = max(now - self._started_at, 1e-9)
        rate = self._rows / elapsed
        share = self._rows / self._total if self._total else 1.0
        left = (self._total - self._rows) / rate if rate > 0 else float("inf")
        eta = f"{left:.0f}s left" if left != float("inf") else "--"
        line = (
            f"{self._rows:,} / {self._total:,} rows ({share:.0%})  {rate:,.0f} rows/s  "
            f"{eta}  {_plural(len(self._in_flight), 'download')} in flight"
        )
        if self._retries:
            line += f"  {_plural(self._retries, 'retry', 'retries')}"
        self._stream.write("\r" + line.ljust(self._width))
        self._stream.flush()
        self._width = len(line)

    def _clear(self) -> None:
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else many or one + 's'}"
