"""The CSV header's layout: where the counted columns are; and how body lines are shown."""

from __future__ import annotations

import csv
from dataclasses import dataclass

from ._exceptions import CsvFormatError

__all__ = ["BOM", "CsvLayout", "shown"]

BOM = b"\xef\xbb\xbf"
_SHOWN_CHARS = 200


def shown(line: bytes) -> str:
    """A line of the body as messages show it: decoded, and cut after 200 characters."""
    text = line.decode("utf-8", errors="replace")
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


@dataclass(frozen=True)
class CsvLayout:
    """Where the counted columns are, as read from the CSV header."""

    field_count: int
    patient_index: int
    event_type_index: int

    @classmethod
    def from_header(cls, header_line: bytes) -> CsvLayout:
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
        indexes = []
        for wanted in ("patient_id", "event_type"):
            found = [i for i, name in enumerate(names) if name == wanted]
            if not found:
                raise CsvFormatError(f"The CSV header {header!r} has no {wanted!r} column.")
            if len(found) > 1:
                raise CsvFormatError(f"The CSV header {header!r} has more than one {wanted!r}.")
            indexes.append(found[0])
        return cls(field_count=len(names), patient_index=indexes[0], event_type_index=indexes[1])


def _text_lines(text: str) -> list[str]:
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return [line for line in lines if line]
