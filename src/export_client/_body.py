"""A CSV body: its header, its pieces of complete data records, its end, its whole count.

`BodyReader` is the upstream half of counting a download: chunks in (from any source), the
`CsvLayout` read from the header and pieces of complete data records out, ready for
`count_block`. It knows the byte-order mark, blank lines before the header and what a body
that stops early looks like. `count_end` counts what a body holds at its end and says whether
it looks cut short; `count_body` counts a whole body in this thread.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ._counting import BlockCount, count_block
from ._defaults import DEFAULT_MAX_LINE_BYTES
from ._exceptions import CsvFormatError
from ._layout import BOM, CsvLayout
from ._lines import LineSplitter, Piece, first_record_end
from ._stats import Statistics

__all__ = ["BodyCount", "BodyEnd", "BodyReader", "count_body", "count_end"]

_BOM = BOM
# Blank records before the header, as csv reads them: nothing but carriage returns, then "\n".
_LEADING_BLANK_RECORDS = re.compile(rb"(?:\r*\n)+")


@dataclass(frozen=True)
class BodyEnd:
    """What a body holds at its end, after its last chunk.

    `records` are complete data records not given out yet, `last` the body's last record if it
    has no line end (a complete row, or a cut one: counting tells). `incomplete` says why a
    body without a usable header looks cut short: empty, or ending inside its header.
    """

    records: bytes = b""
    last: bytes = b""
    incomplete: str | None = None


class BodyReader:
    """Cuts a CSV body, fed chunk by chunk, into its layout and pieces of complete data records."""

    def __init__(
        self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, stats: Statistics | None = None
    ) -> None:
        self._splitter = LineSplitter(max_line_bytes=max_line_bytes)
        # With statistics, the header must name the time and value columns too.
        self.stats = stats
        self.layout: CsvLayout | None = None
        # Bytes before the first 3 are seen: a UTF-8 BOM may be split across chunks.
        self._head: bytes | None = b""

    def feed(self, chunk: bytes) -> list[Piece]:
        """The data records that `chunk` completed, as pieces (maybe none); the header is kept.

        Raises CsvFormatError if the header has no patient_id or event_type column, or a line
        is longer than the limit.
        """
        if self._head is not None:
            chunk = self._strip_bom(chunk)
        pieces = self._splitter.feed(chunk)
        if self.layout is None and pieces:
            rest = self._take_header(b"".join(pieces))
            pieces = [rest] if rest else []
        return pieces

    def finish(self) -> BodyEnd:
        """The end of the body; raises CsvFormatError for a body that is not CSV at all."""
        pending = b""
        if self._head is not None:
            pending, self._head = self._head, None
        records = b"".join(self._splitter.feed(pending))
        # The splitter cuts only at record ends, so what it still holds is one record that
        # has no line end (or nothing).
        last = self._splitter.finish()
        if self.layout is None and records:
            records = self._take_header(records)
        if self.layout is not None:
            return BodyEnd(records, last)
        if b"\r" in last.rstrip(b"\r"):
            raise CsvFormatError(
                "The body's lines end in a bare carriage return (CR) instead of LF or CRLF, "
                "so it has no CSV lines."
            )
        if not last.strip(b"\r\n"):
            return BodyEnd(incomplete="the body is empty: it has no CSV header line")
        try:
            self._take_header(last)  # a header without its line end, and no rows
        except CsvFormatError:
            return BodyEnd(incomplete="the body ended inside its header line")
        return BodyEnd()

    def _strip_bom(self, chunk: bytes) -> bytes:
        assert self._head is not None
        head = self._head + chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._head = None
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _take_header(self, block: bytes) -> bytes:
        """Read the header from the first non-blank record of `block`; return the rest."""
        # One match skips any number of blank lines, which csv skips too.
        blank = _LEADING_BLANK_RECORDS.match(block)
        start = blank.end() if blank else 0
        if start == len(block):
            return b""
        if start:
            block = block[start:]
        end = first_record_end(block)
        self.layout = CsvLayout.from_header(block[:end], stats=self.stats is not None)
        return block[end:]


def count_end(reader: BodyReader, total: BlockCount) -> str | None:
    """Counts what a body holds after its last chunk into `total`.

    Returns why the body looks cut short, or None: a body without a header, or whose last
    record has no line end and is not a complete row, is what a cut body looks like, however
    cleanly its transfer ended.
    """
    end = reader.finish()
    if reader.layout is None:
        return end.incomplete
    if end.records:
        total.merge(count_block(end.records, reader.layout, reader.stats))
    if end.last:
        last = count_block(end.last, reader.layout, reader.stats)
        total.merge(last)
        if last.malformed:
            return (
                "the body ended inside a row: its last line has no line end and is not a "
                f"complete row ({last.malformed_examples[0]!r})"
            )
    return None


@dataclass(frozen=True)
class BodyCount:
    """A whole body's counts, its layout, and why it looks cut short if it does."""

    counts: BlockCount
    layout: CsvLayout | None
    incomplete: str | None


def count_body(
    chunks: Iterable[bytes],
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    stats: Statistics | None = None,
) -> BodyCount:
    """Counts a whole body, chunk by chunk, in this thread (with `stats`, statistics too);
    CsvFormatError if it is not CSV that can be counted."""
    reader = BodyReader(max_line_bytes=max_line_bytes, stats=stats)
    total = BlockCount()
    for chunk in chunks:
        for piece in reader.feed(chunk):
            assert reader.layout is not None  # data records come only after the header
            total.merge(count_block(piece, reader.layout, stats))
    incomplete = count_end(reader, total)
    return BodyCount(total, reader.layout, incomplete)
