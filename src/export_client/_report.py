"""A run's report as people read it: warnings about the data, the summary, the details."""

from __future__ import annotations

from ._results import DownloadResult, ExportReport
from ._terminal import clean

__all__ = ["details", "summary", "warnings"]

# Downloads named one by one in a warning; the rest are summed up.
_LISTED_DOWNLOADS = 5


def warnings(report: ExportReport) -> list[str]:
    """What makes the result not all the data, one sentence each: never to be silenced."""
    lines = []
    for download in report.downloads:
        name = clean(download.download_id)
        if download.unexpected_patients:
            listed = ", ".join(map(clean, download.unexpected_patients[:_LISTED_DOWNLOADS]))
            lines.append(f"download {name} has patients its metadata does not list: {listed}")
        if download.unexpected_event_types:
            listed = ", ".join(map(clean, download.unexpected_event_types[:_LISTED_DOWNLOADS]))
            lines.append(f"download {name} has event types its metadata does not list: {listed}")
    malformed = [download for download in report.downloads if download.malformed]
    if malformed:
        lines.append(_malformed(malformed))
    return lines


def _malformed(downloads: list[DownloadResult]) -> str:
    total = sum(download.malformed for download in downloads)
    where = ", ".join(
        f"{download.malformed:,} in download {clean(download.download_id)}"
        for download in downloads[:_LISTED_DOWNLOADS]
    )
    rest = downloads[_LISTED_DOWNLOADS:]
    if rest:
        where += f" and {sum(d.malformed for d in rest):,} in {len(rest)} more downloads"
    return f"{total:,} malformed row{'s were' if total != 1 else ' was'} not counted: {where}"


def summary(report: ExportReport) -> str:
    """The one line of `--time`."""
    rate = report.rows / report.seconds if report.seconds > 0 else 0.0
    return (
        f"{report.export_id}: {report.rows:,} rows, {len(report.downloads)} downloads, "
        f"{report.bytes / 1e6:,.1f} MB in {report.seconds:.2f} s ({rate:,.0f} rows/s), "
        f"{report.retries} retries, {report.malformed:,} malformed rows"
    )


def details(report: ExportReport) -> list[str]:
    """Per download, for `--verbose`: its figures and its first malformed rows."""
    lines = []
    for download in report.downloads:
        lines.append(
            f"{clean(download.download_id)}: {download.rows:,} rows, {download.bytes:,} bytes, "
            f"{download.attempts} attempt(s), {download.malformed:,} malformed"
        )
        lines += [f"  malformed: {example!r}" for example in download.malformed_examples]
    return lines
