"""Progress events of a run, and a terminal line that shows them."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Protocol, TextIO

from ._models import DownloadInfo


class ProgressListener(Protocol):
    """Receives what happens during a run; every method must be cheap."""

    def started(self, downloads: Sequence[DownloadInfo]) -> None: ...
    def download_started(self, download_id: str) -> None: ...
    def received(self, download_id: str, nbytes: int) -> None: ...
    def counted(self, download_id: str, rows: int) -> None: ...
    def retrying(self, download_id: str, reason: str, delay: float, rows: int, nbytes: int) -> None:
        """A failed attempt's `rows` and `nbytes` no longer count towards the result."""

    def download_finished(self, download_id: str) -> None: ...
    def request_retrying(self, what: str, reason: str, delay: float) -> None:
        """A discovery request (`what` it fetches) failed and is tried again after `delay`."""

    def finished(self) -> None: ...


class NoProgress:
    """Ignores every event."""

    def started(self, downloads: Sequence[DownloadInfo]) -> None:
        pass

    def download_started(self, download_id: str) -> None:
        pass

    def received(self, download_id: str, nbytes: int) -> None:
        pass

    def counted(self, download_id: str, rows: int) -> None:
        pass

    def retrying(self, download_id: str, reason: str, delay: float, rows: int, nbytes: int) -> None:
        pass

    def download_finished(self, download_id: str) -> None:
        pass

    def request_retrying(self, what: str, reason: str, delay: float) -> None:
        pass

    def finished(self) -> None:
        pass


class PlainProgress(NoProgress):
    """Retries as plain lines, one per event: for a log or a pipe rather than a terminal."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream

    def retrying(self, download_id: str, reason: str, delay: float, rows: int, nbytes: int) -> None:
        self._line(f"retrying download {download_id} in {delay:.1f}s: {reason}")

    def request_retrying(self, what: str, reason: str, delay: float) -> None:
        self._line(f"retrying {what} in {delay:.1f}s: {reason}")

    def _line(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()


class TerminalProgress(NoProgress):
    """One self-updating line on a terminal: rows of the announced total, rate, time left."""

    def __init__(self, stream: TextIO = sys.stderr, *, interval: float = 0.2) -> None:
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

    def retrying(self, download_id: str, reason: str, delay: float, rows: int, nbytes: int) -> None:
        self._rows -= rows
        self._retries += 1
        self._clear()
        self._stream.write(f"retrying {download_id} in {delay:.1f}s: {reason}\n")
        self._draw(force=True)

    def download_finished(self, download_id: str) -> None:
        self._in_flight.discard(download_id)
        self._draw()

    def request_retrying(self, what: str, reason: str, delay: float) -> None:
        self._retries += 1
        self._clear()
        self._stream.write(f"retrying {what} in {delay:.1f}s: {reason}\n")
        self._draw(force=True)

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
