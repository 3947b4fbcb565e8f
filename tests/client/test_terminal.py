"""Progress for people: the rich display on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import re

from export_client._metadata import DownloadInfo
from export_client._progress import NoProgress, Retry
from export_client._terminal import PlainProgress, RichProgress, clean, progress_for


def info(name: str, rows: int) -> DownloadInfo:
    return DownloadInfo(name, rows, ("P1",), ("t",), "", "")


def screen_text(screen: io.StringIO) -> str:
    """What the terminal shows, without the escape sequences that move the cursor."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())


def test_the_display_shows_rows_of_the_announced_total_and_downloads() -> None:
    screen = io.StringIO()
    progress = RichProgress(screen, label="small", width=160)
    progress.discovering()
    progress.started([info("a", 600), info("b", 400)])
    progress.download_started("a")
    progress.download_started("b")
    progress.received("a", 2_000_000)
    progress.counted("a", 250)
    progress.download_finished("a")
    progress._progress.refresh()
    text = screen_text(screen)
    assert "250/1,000 rows" in text
    assert "25%" in text
    assert "MB" in text
    assert "1/2 done, 1 in flight" in text
    progress.finished()


def test_a_retry_takes_back_its_rows_and_is_printed_above() -> None:
    screen = io.StringIO()
    progress = RichProgress(screen, width=160)
    progress.started([info("a", 100)])
    progress.download_started("a")
    progress.counted("a", 60)
    progress.retrying(Retry("download a", "the stream broke", 0.5, "a", 60, 1000))
    progress._progress.refresh()
    text = screen_text(screen)
    assert "retrying download a in 0.5s: the stream broke" in text
    assert "0/100 rows" in text.rsplit("retrying", 1)[1]
    progress.finished()


def test_the_display_goes_at_the_end() -> None:
    screen = io.StringIO()
    progress = RichProgress(screen, width=100)
    progress.started([info("a", 10)])
    progress.counted("a", 10)
    progress.finished()
    # transient: the last thing drawn moves up over the display's line and erases it
    assert screen.getvalue().endswith("\x1b[1A\x1b[2K")


def test_plain_progress_prints_one_line_per_retry() -> None:
    stream = io.StringIO()
    progress = PlainProgress(stream)
    progress.retrying(Retry("the export list", "GET ... answered 503", 0.25))
    assert stream.getvalue() == "retrying the export list in 0.2s: GET ... answered 503\n"


def test_which_progress_a_run_gets() -> None:
    assert isinstance(progress_for(io.StringIO(), quiet=False), PlainProgress)
    assert isinstance(progress_for(io.StringIO(), quiet=True), NoProgress)


def test_text_from_the_server_is_escaped_and_shortened() -> None:
    assert clean("P001\x1b[2J\n") == "P001\\x1b[2J\\n"
    assert clean("x" * 100) == "x" * 77 + "..."
    assert clean("Zoë") == "Zoë"
