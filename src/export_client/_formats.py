"""The result document in each output format: JSON (the default), a table, CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from ._results import ExportReport

__all__ = ["FORMATS", "render"]


def _json(report: ExportReport) -> bytes:
    return report.to_json()


_STATS = ("count", "mean", "min", "max", "anomalies", "latency")


def _csv(report: ExportReport) -> bytes:
    """One sorted row per (patient, event type): for spreadsheets, sort and awk."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if report.stats is None:
        writer.writerow(["patient_id", "event_type", "count"])
        for patient, types in report.patients.items():
            for event_type, count in types.items():
                writer.writerow([patient, event_type, count])
    else:
        writer.writerow(["patient_id", "event_type", *_STATS])
        for patient, groups in sorted(report.stats.items()):
            for event_type, group in sorted(groups.items()):
                figures = group.to_dict()
                writer.writerow(
                    [
                        patient,
                        event_type,
                        *("" if figures[f] is None else figures[f] for f in _STATS),
                    ]
                )
    return text.getvalue().encode()


def _table(report: ExportReport) -> bytes:
    """Patients down, event types across, a totals row: for people."""
    # rich only for this format: nobody else pays for importing it.
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if report.stats is not None:
        return _stats_table(report)
    table = Table(box=box.SIMPLE_HEAD, title=f"{report.export_id}: records per patient")
    table.add_column("patient")
    types = list(report.totals)
    for event_type in types:
        table.add_column(Text(event_type), justify="right")
    for patient, counts in report.patients.items():
        table.add_row(Text(patient), *(f"{counts.get(t, 0):,}" for t in types))
    table.add_section()
    table.add_row("total", *(f"{report.totals[t]:,}" for t in types), style="bold")
    return _text(table)


def _stats_table(report: ExportReport) -> bytes:
    """One row per patient and event type with its figures, then a total row per event type."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    assert report.stats is not None
    assert report.type_stats is not None
    table = Table(box=box.SIMPLE_HEAD, title=f"{report.export_id}: statistics per patient")
    table.add_column("patient")
    table.add_column("event type")
    for name in _STATS:
        table.add_column(name, justify="right")
    for patient, groups in sorted(report.stats.items()):
        for event_type, group in sorted(groups.items()):
            table.add_row(Text(patient), Text(event_type), *_cells(group.to_dict()))
    table.add_section()
    for event_type, group in sorted(report.type_stats.items()):
        table.add_row("total", Text(event_type), *_cells(group.to_dict()))
    return _text(table)


def _cells(figures: dict[str, object]) -> list[str]:
    cells = []
    for name in _STATS:
        value = figures[name]
        if value is None:
            cells.append("-")
        elif isinstance(value, int):
            cells.append(f"{value:,}")
        else:
            cells.append(f"{value:,.3f}")
    return cells


def _text(table: Any) -> bytes:
    from rich.console import Console

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
