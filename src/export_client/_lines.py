"""Incremental splitting of a CSV byte stream into blocks of complete records.

A record normally is one line ending in ``\\n``, but a quoted field may hold newlines, so the
splitter follows the quoting exactly as the ``csv`` module reads lines split at ``\\n``: a quote
opens a quoted field only at the start of a field, a doubled quote inside one is a literal
quote, and a stray ``\\r`` followed by more data makes ``csv`` drop the rest of that line. Only
chunks that contain a quote (or arrive inside an open quoted field) pay for that state machine;
the others are split with one ``rfind``.
"""

from __future__ import annotations

import re

from ._defaults import DEFAULT_MAX_LINE_BYTES
from ._exceptions import CsvFormatError

__all__ = ["LineSplitter", "Piece", "first_record_end"]

# Complete records: bytes, or a memoryview of a network chunk that holds them (no copy).
Piece = bytes | memoryview

# Parser states, named after the states of CPython's _csv.c reader.
_START_RECORD = 0
_START_FIELD = 1
_IN_FIELD = 2
_IN_QUOTED_FIELD = 3
_QUOTE_IN_QUOTED_FIELD = 4
_EAT_CRNL = 5
_SKIP_LINE = 6  # csv raised "new-line character seen in unquoted field": rest of line is lost

_LF = ord("\n")
_CR = ord("\r")
_COMMA = ord(",")
_QUOTE = ord('"')

_FIELD_STOP = re.compile(rb"[,\n\r]")


def _scan(data: bytes, state: int) -> tuple[int, list[int]]:
    """Run the reader's state machine over `data`; return the end state and the record ends.

    A record end is the index just after a ``\\n`` that ends a record (not one inside a quoted
    field).
    """
    cuts: list[int] = []
    pos = 0
    size = len(data)
    while pos < size:
        if state == _IN_QUOTED_FIELD:
            quote = data.find(b'"', pos)
            if quote < 0:
                break
            state = _QUOTE_IN_QUOTED_FIELD
            pos = quote + 1
            continue
        if state == _SKIP_LINE:
            newline = data.find(b"\n", pos)
            if newline < 0:
                break
            pos = newline + 1
            cuts.append(pos)
            state = _START_RECORD
            continue
        if state == _IN_FIELD:
            # Quotes inside an unquoted field are literal, so jump to the next separator.
            match = _FIELD_STOP.search(data, pos)
            if match is None:
                break
            pos = match.start()
        char = data[pos]
        pos += 1
        if state == _EAT_CRNL:
            if char == _LF:
                cuts.append(pos)
                state = _START_RECORD
            elif char != _CR:
                state = _SKIP_LINE
        elif char == _LF:
            cuts.append(pos)
            state = _START_RECORD
        elif char == _CR:
            state = _EAT_CRNL
        elif char == _COMMA:
            state = _START_FIELD
        elif char == _QUOTE:
            # A field start or a doubled quote: inside an unquoted field the search above has
            # already skipped quotes, as csv takes them literally there.
            state = _IN_QUOTED_FIELD
        else:
            state = _IN_FIELD
    return state, cuts


def first_record_end(data: bytes) -> int:
    """Return the index just after the first record of `data` (``len(data)`` if unterminated)."""
    newline = data.find(b"\n")
    if newline < 0:
        return len(data)
    if b'"' not in data[:newline]:
        return newline + 1
    _, cuts = _scan(data, _START_RECORD)
    return cuts[0] if cuts else len(data)


class LineSplitter:
    """Turns a stream of byte chunks into blocks of complete lines.

    `feed` returns the complete records seen so far (each ending in ``\\n``, never cut inside a
    quoted field), as pieces that are mostly views of the chunks, and carries the unfinished
    last record into the next call; `finish` returns
    what is left at the end of the body. A record longer than `max_line_bytes` (not counting
    its final ``\\n``) raises `CsvFormatError`, so the carry never grows without bound.
    """

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self._max_line_bytes = max_line_bytes
        # The carry is kept as parts so that a long record in many small chunks costs O(n).
        self._carry: list[bytes] = []
        self._carry_len = 0
        self._state = _START_RECORD

    def feed(self, chunk: bytes) -> list[Piece]:
        """Add a chunk; return the records it completed, as pieces in order (maybe none).

        The record carried over from earlier chunks comes first, joined (usually one line);
        the chunk's other complete records come as one memoryview of the chunk, not copied.
        """
        if not chunk:
            return []
        if self._state != _IN_QUOTED_FIELD and b'"' not in chunk:
            # Without quotes every newline ends a record; the state only matters for the tail.
            cut = chunk.rfind(b"\n") + 1
            if not cut:
                self._state = _scan(chunk, self._state)[0]
                self._carry_more(chunk)
                return []
            if self._carry_len + cut > self._max_line_bytes:
                self._check_unquoted_lines(chunk, cut)
            self._state = (
                _scan(chunk[cut:], _START_RECORD)[0] if cut < len(chunk) else _START_RECORD
            )
            first = chunk.find(b"\n") + 1 if self._carry else 0
        else:
            self._state, cuts = _scan(chunk, self._state)
            if not cuts:
                self._carry_more(chunk)
                return []
            self._check_records(cuts)
            cut = cuts[-1]
            first = cuts[0] if self._carry else 0
        pieces: list[Piece] = []
        if self._carry:
            self._carry.append(chunk[:first])
            pieces.append(b"".join(self._carry))
            self._carry.clear()
            self._carry_len = 0
        if first == 0 and cut == len(chunk):
            pieces.append(chunk)
        elif first < cut:
            pieces.append(memoryview(chunk)[first:cut])
        if cut < len(chunk):
            self._carry_more(chunk[cut:])
        return pieces

    def finish(self) -> bytes:
        """Return what is left at the end of the body (a last record without newline, or b"")."""
        rest = b"".join(self._carry)
        self._carry.clear()
        self._carry_len = 0
        self._state = _START_RECORD
        return rest

    def _carry_more(self, data: bytes) -> None:
        self._carry.append(data)
        self._carry_len += len(data)
        if self._carry_len > self._max_line_bytes:
            self._too_long()

    def _check_unquoted_lines(self, chunk: bytes, cut: int) -> None:
        limit = self._max_line_bytes
        first = chunk.find(b"\n")
        if self._carry_len + first > limit:
            self._too_long()
        start = first + 1
        # A line starting at `start` fits iff a newline lies within `limit` bytes of it; jumping
        # to the last such newline checks a whole window of short lines per step.
        while cut - start > limit:
            newline = chunk.rfind(b"\n", start, start + limit + 1)
            if newline < 0:
                self._too_long()
            start = newline + 1

    def _check_records(self, cuts: list[int]) -> None:
        limit = self._max_line_bytes
        start = -self._carry_len
        for end in cuts:
            if end - 1 - start > limit:
                self._too_long()
            start = end

    def _too_long(self) -> None:
        hint = ""
        if any(b"\r" in part.rstrip(b"\r") for part in self._carry):
            hint = " (its lines seem to end in a bare carriage return, CR, instead of LF)"
        raise CsvFormatError(
            f"A CSV line is longer than the limit of {self._max_line_bytes} bytes{hint}; "
            "the body is not the expected CSV."
        )
