"""Progress for people, on stderr: a rich display on a terminal, one plain line per event else.

rich is imported only when stderr is a terminal: a run in a pipe or a log does not pay for it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ._metadata import DownloadInfo
from ._progress import NoProgress, ProgressListener, Retry

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["PlainProgress", "RichProgress", "clean", "progress_for"]

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
        return RichProgress(stream, label=label)
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


class RichProgress(NoProgress):
    """A transient rich display: a spinner while discovering, then a bar of the rows announced,
    the bytes and their rate, a smoothed time left, downloads done and in flight; retries are
    printed above it."""

    def __init__(self, stream: TextIO, *, label: str = "", width: int | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        # A given width is for tests, which draw on a string as if on a terminal.
        self._console = Console(
            file=stream, highlight=False, force_terminal=True if width else None, width=width
        )
        width = self._console.width
        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
        columns += [BarColumn(bar_width=None if width >= 100 else 10), TaskProgressColumn()]
        columns.append(TextColumn("{task.fields[rows]}"))
        if width >= 80:
            columns.append(TextColumn("{task.fields[transfer]}"))
        columns.append(TimeRemainingColumn())
        if width >= 100:
            columns.append(TextColumn("{task.fields[downloads]}"))
        self._progress: Progress = Progress(
            *columns,
            console=self._console,
            transient=True,
            refresh_per_second=4,
            speed_estimate_period=10,
        )
        self._label = clean(label, 20)
        self._task: TaskID | None = None
        self._total = 0
        self._rows = 0
        self._bytes = 0
        self._downloads = 0
        self._done = 0
        self._in_flight = 0
        self._rate = 0.0  # bytes per second, smoothed
        self._rate_at = (time.monotonic(), 0)

    def discovering(self) -> None:
        self._progress.start()
        self._task = self._progress.add_task(
            f"{self._label} discovering".strip(), total=None, rows="", transfer="", downloads=""
        )

    def started(self, downloads: Sequence[DownloadInfo]) -> None:
        self._total = sum(download.rows for download in downloads)
        self._downloads = len(downloads)
        if self._task is None:
            self.discovering()
        assert self._task is not None
        self._progress.update(self._task, description=self._label, total=self._total)
        self._refresh()

    def download_started(self, download_id: str) -> None:
        self._in_flight += 1
        self._refresh()

    def received(self, download_id: str, nbytes: int) -> None:
        self._bytes += nbytes

    def counted(self, download_id: str, rows: int) -> None:
        self._rows += rows
        self._refresh()

    def retrying(self, retry: Retry) -> None:
        self._rows -= retry.rows
        self._bytes -= retry.nbytes
        self._progress.console.print(retry_line(retry), markup=False, highlight=False)
        self._refresh()

    def download_finished(self, download_id: str) -> None:
        self._in_flight -= 1
        self._done += 1
        self._refresh()

    def finished(self) -> None:
        self._progress.stop()

    def _refresh(self) -> None:
        if self._task is None:
            return
        now = time.monotonic()
        then, before = self._rate_at
        if now - then >= 0.5:
            rate = (self._bytes - before) / (now - then)
            self._rate = rate if not self._rate else 0.7 * self._rate + 0.3 * rate
            self._rate_at = (now, self._bytes)
        self._progress.update(
            self._task,
            completed=self._rows,
            rows=f"{self._rows:,}/{self._total:,} rows",
            transfer=f"{self._bytes / 1e6:,.0f} MB {self._rate / 1e6:,.0f} MB/s",
            downloads=f"{self._done}/{self._downloads} done, {self._in_flight} in flight",
        )
