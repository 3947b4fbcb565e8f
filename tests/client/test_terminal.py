"""Progress for people: the terminal line, and plain lines elsewhere."""

from __future__ import annotations

import io

from export_client._metadata import DownloadInfo
from export_client._progress import Retry
from export_client._terminal import PlainProgress, TerminalProgress, clean


def info(name: str, rows: int) -> DownloadInfo:
    return DownloadInfo(name, rows, ("P1",), ("t",), "", "")


def test_shows_rows_of_the_announced_total_and_downloads_in_flight() -> None:
    screen = io.StringIO()
    progress = TerminalProgress(screen, interval=0)
    progress.started([info("a", 600), info("b", 400)])
    progress.download_started("a")
    progress.download_started("b")
    progress.counted("a", 250)
    last = screen.getvalue().split("\r")[-1]
    assert "250 / 1,000 rows (25%)" in last
    assert "2 downloads in flight" in last
    assert "rows/s" in last
    assert "left" in last


def test_a_retry_takes_back_its_rows_and_is_reported_on_its_own_line() -> None:
    screen = io.StringIO()
    progress = TerminalProgress(screen, interval=0)
    progress.started([info("a", 100)])
    progress.download_started("a")
    progress.counted("a", 60)
    progress.retrying(Retry("download a", "the stream broke", 0.5, "a", 60, 1000))
    text = screen.getvalue()
    assert "retrying download a in 0.5s: the stream broke\n" in text
    assert "0 / 100 rows" in text.split("\r")[-1]
    assert "1 retry" in text.split("\r")[-1]


def test_finished_clears_the_line() -> None:
    screen = io.StringIO()
    progress = TerminalProgress(screen, interval=0)
    progress.started([info("a", 10)])
    progress.finished()
    assert screen.getvalue().endswith("\r")
    assert screen.getvalue().split("\r")[-2].strip() == ""


def test_redraws_are_throttled() -> None:
    screen = io.StringIO()
    progress = TerminalProgress(screen, interval=3600)
    progress.started([info("a", 10)])
    drawn = screen.getvalue()
    for _ in range(100):
        progress.counted("a", 0)
    assert screen.getvalue() == drawn


def test_plain_progress_prints_one_line_per_retry() -> None:
    stream = io.StringIO()
    progress = PlainProgress(stream)
    progress.retrying(Retry("the export list", "GET ... answered 503", 0.25))
    assert stream.getvalue() == "retrying the export list in 0.2s: GET ... answered 503\n"


def test_text_from_the_server_is_escaped_and_shortened() -> None:
    assert clean("P001\x1b[2J\n") == "P001\\x1b[2J\\n"
    assert clean("x" * 100) == "x" * 77 + "..."
    assert clean("Zoë") == "Zoë"
