"""The result document in each output format: JSON (the default), a table, CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

from ._results import ExportReport

__all__ = ["FORMATS", "render"]


def _json(report: ExportReport) -> bytes:
    return report.to_json()


def _csv(report: ExportReport) -> bytes:
    """One sorted row per (patient, event type): for spreadsheets, sort and awk."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["patient_id", "event_type", "count"])
    for patient, types in report.patients.items():
        for event_type, count in types.items():
            writer.writerow([patient, event_type, count])
    return text.getvalue().encode()


def _table(report: ExportReport) -> bytes:
    """Patients down, event types across, a totals row: for people."""
    # rich only for this format: nobody else pays for importing it.
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, title=f"{report.export_id}: records per patient")
    table.add_column("patient")
    types = list(report.totals)
    for event_type in types:
        table.add_column(Text(event_type), justify="right")
    for patient, counts in report.patients.items():
        table.add_row(Text(patient), *(f"{counts.get(t, 0):,}" for t in types))
    table.add_section()
    table.add_row("total", *(f"{report.totals[t]:,}" for t in types), style="bold")
    out = io.StringIO()
    # A fixed, generous width and no colour: the same bytes on a terminal, in a file, in a pipe.
    Console(file=out, width=200, color_system=None, highlight=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()).encode() + b"\n"


FORMATS: dict[str, Callable[[ExportReport], bytes]] = {
    "json": _json,
    "table": _table,
    "csv": _csv,
}


def render(report: ExportReport, format_name: str) -> bytes:
    """The result of `report` as the named format writes it."""
    return FORMATS[format_name](report)
