"""The CSV header's layout: where the counted columns are; and how body lines are shown."""

from __future__ import annotations

import csv
from dataclasses import dataclass

from ._exceptions import CsvFormatError

__all__ = ["BOM", "CsvLayout", "shown"]

BOM = b"\xef\xbb\xbf"
_COUNTED = ("patient_id", "event_type")
_SHOWN_CHARS = 200


def shown(line: bytes) -> str:
    """A line of the body as messages show it: decoded, and cut after 200 characters."""
    text = line.decode("utf-8", errors="replace")
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


@dataclass(frozen=True)
class CsvLayout:
    """Where the counted columns are, as read from the CSV header.

    The time and value columns are looked for only for statistics (`stats=True`).
    """

    field_count: int
    patient_index: int
    event_type_index: int
    time_index: int | None = None
    value_index: int | None = None

    @classmethod
    def from_header(cls, header_line: bytes, *, stats: bool = False) -> CsvLayout:
        """Read the layout from the header record; CsvFormatError if a needed column is missing."""
        if header_line.startswith(BOM):
            header_line = header_line[len(BOM) :]
        text = header_line.decode("utf-8", errors="replace")
        try:
            rows = [row for row in csv.reader(_text_lines(text)) if row]
        except csv.Error as error:
            raise CsvFormatError(f"The CSV header cannot be read: {error}.") from error
        header = shown(header_line.rstrip(b"\r\n"))
        if len(rows) != 1:
            raise CsvFormatError(f"The CSV header {header!r} is not a single CSV record.")
        # Names are matched without surrounding spaces; values never are.
        names = [name.strip() for name in rows[0]]
        wanted = ("patient_id", "event_type", "event_time", "value") if stats else _COUNTED
        indexes = []
        for column in wanted:
            found = [i for i, name in enumerate(names) if name == column]
            if not found:
                raise CsvFormatError(f"The CSV header {header!r} has no {column!r} column.")
            if len(found) > 1:
                raise CsvFormatError(f"The CSV header {header!r} has more than one {column!r}.")
            indexes.append(found[0])
        return cls(len(names), *indexes)


def _text_lines(text: str) -> list[str]:
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return [line for line in lines if line]
