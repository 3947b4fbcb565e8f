"""The counting core: (patient_id, event_type) pairs of CSV blocks, fast and exact.

`count_block` counts a block with the compiled kernel (`_kernel.c`) where it was built, and
with the pure-Python core below where it was not, or where the kernel declines the block (it
takes only quote-free lines). Both give the same result; the pure core is the reference.

The pure core tries a fast path on each sub-block of quote-free lines: it checks with C-speed
bytes operations that every line has exactly the header's number of fields, splits all fields
at once and counts the pairs with `collections.Counter`; blank lines are dropped first. A
sub-block that fails a check (a malformed row, a stray ``\\r``) and any block holding a quote
goes through the exact path, which reads quoted records with the `csv` module and classifies
each row. Both paths give the same result; the fast path just declines whatever it cannot
prove.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType

from export_client._exceptions import CsvFormatError
from export_client._lines import DEFAULT_MAX_LINE_BYTES, LineSplitter, Piece, first_record_end
from export_client._results import DownloadCount

__all__ = [
    "COUNTING_CORE",
    "PURE_PYTHON_ENV",
    "BlockCount",
    "CsvLayout",
    "DownloadCounter",
    "count_block",
]

# Set to anything but "" or "0" to count with the pure-Python core even where the kernel is
# built, as AIOHTTP_NO_EXTENSIONS does for aiohttp: to rule the kernel out.
PURE_PYTHON_ENV = "EXPORT_COUNTER_PURE_PYTHON"


def _load_kernel() -> ModuleType | None:
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    try:
        from . import _kernel  # type: ignore[attr-defined]
    except ImportError:
        return None  # not built: no C compiler at install time
    return _kernel  # type: ignore[no-any-return]


_kernel = _load_kernel()
COUNTING_CORE = "compiled" if _kernel is not None else "pure Python"
"""Which core counts in this process: "compiled" or "pure Python"."""

MAX_MALFORMED_EXAMPLES = 5
_EXAMPLE_CHARS = 200
_BOM = b"\xef\xbb\xbf"

# Small enough for the split fields to stay in the CPU cache, which about doubles the speed
# compared with splitting a whole 1 MiB block at once.
_SUB_BLOCK_BYTES = 128 << 10

_ALL_BUT_SEPARATORS = bytes(b for b in range(256) if b not in b",\n")
# A run of line ends: every "\n" after the first ends a blank line.
_BLANK_RUNS = re.compile(rb"\n\n+")
# Blank records before the header, as csv reads them: nothing but carriage returns, then "\n".
_LEADING_BLANK_RECORDS = re.compile(rb"(?:\r*\n)+")


@dataclass(frozen=True)
class CsvLayout:
    """Where the counted columns are, as read from the CSV header."""

    field_count: int
    patient_index: int
    event_type_index: int

    @classmethod
    def from_header(cls, header_line: bytes) -> CsvLayout:
        """Read the layout from the header record; CsvFormatError if a needed column is missing."""
        if header_line.startswith(_BOM):
            header_line = header_line[len(_BOM) :]
        text = header_line.decode("utf-8", errors="replace")
        try:
            rows = [row for row in csv.reader(_text_lines(text)) if row]
        except csv.Error as error:
            raise CsvFormatError(f"The CSV header cannot be read: {error}.") from error
        shown = _example(header_line.rstrip(b"\r\n"))
        if len(rows) != 1:
            raise CsvFormatError(f"The CSV header {shown!r} is not a single CSV record.")
        # Names are matched without surrounding spaces; values never are.
        names = [name.strip() for name in rows[0]]
        indexes = []
        for wanted in ("patient_id", "event_type"):
            found = [i for i, name in enumerate(names) if name == wanted]
            if not found:
                raise CsvFormatError(f"The CSV header {shown!r} has no {wanted!r} column.")
            if len(found) > 1:
                raise CsvFormatError(f"The CSV header {shown!r} has more than one {wanted!r}.")
            indexes.append(found[0])
        return cls(field_count=len(names), patient_index=indexes[0], event_type_index=indexes[1])


@dataclass
class BlockCount:
    """The counts of one block of lines."""

    pairs: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    rows: int = 0  # data rows seen, malformed included, blank lines excluded
    malformed: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    blank_lines: int = 0


def count_block(block: Piece, layout: CsvLayout) -> BlockCount:
    """Count the (patient_id, event_type) pairs of whole CSV lines (the last may lack "\\n")."""
    if _kernel is not None:
        counted = _kernel.count_lines(
            block,
            layout.field_count,
            layout.patient_index,
            layout.event_type_index,
            MAX_MALFORMED_EXAMPLES,
        )
        if counted is not None:
            pairs, rows, malformed, blank_lines, examples = counted
            return BlockCount(
                pairs, rows, malformed, [_example(line) for line in examples], blank_lines
            )
    return count_block_pure(block, layout)


def count_block_pure(block: Piece, layout: CsvLayout) -> BlockCount:
    """`count_block` in pure Python: the kernel's fallback and its reference."""
    if isinstance(block, memoryview):
        block = block.tobytes()
    tally = _Tally()
    if b'"' in block:
        # Newlines may sit inside quoted fields, so the block cannot be cut into sub-blocks.
        _count_exact(block, layout, tally)
    else:
        for sub_block in _sub_blocks(block):
            if not _count_fast(sub_block, layout, tally):
                _count_exact(sub_block, layout, tally)
    return BlockCount(
        pairs=dict(tally.pairs),
        rows=tally.rows,
        malformed=tally.malformed,
        malformed_examples=tally.examples,
        blank_lines=tally.blank_lines,
    )


class DownloadCounter:
    """Counts one download's body, fed chunk by chunk.

    `feed` does everything in-process; a caller that counts elsewhere uses `split` to get
    blocks of complete data lines, sends them to `count_block` and merges the results back
    with `add`. `finish` must be called at the end of the body.

    After `finish`, `incomplete` says why the body looks cut short, or is None: a body that
    is empty, or whose last record lacks its line end and is not a complete header or row,
    is what a cut body looks like, however cleanly its transfer ended.
    """

    layout: CsvLayout | None

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._splitter = LineSplitter(max_line_bytes=max_line_bytes)
        self.layout = None
        self.incomplete: str | None = None
        # Bytes before the first 3 are seen: a UTF-8 BOM may be split across chunks.
        self._head: bytes | None = b""
        self._pairs: Counter[tuple[bytes, bytes]] = Counter()
        self._rows = 0
        self._malformed = 0
        self._blank_lines = 0
        self._examples: list[str] = []

    @property
    def rows(self) -> int:
        """Data rows counted so far, malformed included."""
        return self._rows

    @property
    def blank_lines(self) -> int:
        """Blank lines after the header counted so far."""
        return self._blank_lines

    def split(self, chunk: bytes) -> list[Piece]:
        """Feed a chunk; return the complete data lines it completed, as pieces (maybe none)."""
        if self._head is not None:
            chunk = self._strip_bom(chunk)
        pieces = self._splitter.feed(chunk)
        if self.layout is None and pieces:
            rest = self._take_header(b"".join(pieces))
            pieces = [rest] if rest else []
        return pieces

    def add(self, block_count: BlockCount) -> None:
        """Merge the counts of a block."""
        self._pairs.update(block_count.pairs)
        self._rows += block_count.rows
        self._malformed += block_count.malformed
        self._blank_lines += block_count.blank_lines
        room = MAX_MALFORMED_EXAMPLES - len(self._examples)
        if room > 0:
            self._examples.extend(block_count.malformed_examples[:room])

    def feed(self, chunk: bytes) -> None:
        """Feed a chunk and count the lines it completed."""
        for piece in self.split(chunk):
            assert self.layout is not None  # split returns data lines only after the header
            self.add(count_block(piece, self.layout))

    def finish(self) -> None:
        """End of body: count the last record, and tell whether the body looks incomplete.

        Raises CsvFormatError if the body is not CSV that can be counted. A body that merely
        stops early (empty, or ending inside its header or its last row) sets `incomplete`.
        """
        pending = b""
        if self._head is not None:
            pending = self._head
            self._head = None
        complete = b"".join(self._splitter.feed(pending))
        # The splitter cuts only at record ends, so what it still holds is one record that
        # has no line end (or nothing).
        last = self._splitter.finish()
        if self.layout is None and complete:
            complete = self._take_header(complete)
        if self.layout is None:
            if b"\r" in last.rstrip(b"\r"):
                raise CsvFormatError(
                    "The body's lines end in a bare carriage return (CR) instead of LF or "
                    "CRLF, so it has no CSV lines."
                )
            if not last.strip(b"\r\n"):
                self.incomplete = "the body is empty: it has no CSV header line"
                return
            try:
                self._take_header(last)
            except CsvFormatError:
                self.incomplete = "the body ended inside its header line"
            return
        if complete:
            self.add(count_block(complete, self.layout))
        if last:
            counted = count_block(last, self.layout)
            if counted.malformed:
                self.incomplete = (
                    "the body ended inside a row: its last line has no line end and is not "
                    f"a complete row ({counted.malformed_examples[0]!r})"
                )
            self.add(counted)

    def result(self) -> DownloadCount:
        """The counts so far, with the values decoded as UTF-8."""
        pairs: Counter[tuple[str, str]] = Counter()
        for (patient, event_type), count in self._pairs.items():
            key = (
                patient.decode("utf-8", errors="replace"),
                event_type.decode("utf-8", errors="replace"),
            )
            pairs[key] += count
        return DownloadCount(
            pairs=dict(pairs),
            rows=self._rows,
            malformed=self._malformed,
            malformed_examples=tuple(self._examples),
        )

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
        self.layout = CsvLayout.from_header(block[:end])
        return block[end:]


class _Tally:
    """Running counts of one `count_block` call."""

    def __init__(self) -> None:
        self.pairs: Counter[tuple[bytes, bytes]] = Counter()
        self.rows = 0
        self.malformed = 0
        self.blank_lines = 0
        self.examples: list[str] = []

    def add_malformed(self, line: bytes) -> None:
        self.malformed += 1
        if len(self.examples) < MAX_MALFORMED_EXAMPLES:
            self.examples.append(_example(line))


def _example(line: bytes) -> str:
    text = line.decode("utf-8", errors="replace")
    return text if len(text) <= _EXAMPLE_CHARS else text[:_EXAMPLE_CHARS] + "..."


def _sub_blocks(block: bytes) -> Iterator[bytes]:
    """Cut a quote-free block at newlines into pieces of about `_SUB_BLOCK_BYTES`."""
    size = len(block)
    if size <= _SUB_BLOCK_BYTES:
        if block:
            yield block
        return
    start = 0
    while start < size:
        end = block.rfind(b"\n", start, start + _SUB_BLOCK_BYTES) + 1
        if end <= start:  # one line longer than a sub-block
            end = block.find(b"\n", start + _SUB_BLOCK_BYTES) + 1 or size
        yield block[start:end]
        start = end


def _count_fast(block: bytes, layout: CsvLayout, tally: _Tally) -> bool:
    """Count a quote-free block if every line is well formed; False (nothing counted) if not."""
    if not block:
        return True
    if not block.endswith(b"\n"):
        block += b"\n"
    if b"\r" in block:
        if block.count(b"\r") != block.count(b"\r\n"):
            return False
        block = block.replace(b"\r\n", b"\n")
    blank_lines = 0
    if b"\n\n" in block or block.startswith(b"\n"):
        # Blank lines are dropped in one C-level pass rather than sent down the exact path,
        # which would cost a Python loop iteration per line: a body of nothing but newlines
        # must be as cheap as rows.
        rows_only = _BLANK_RUNS.sub(b"\n", block).removeprefix(b"\n")
        blank_lines = len(block) - len(rows_only)
        block = rows_only
        if not block:
            tally.blank_lines += blank_lines
            return True
    ncols = layout.field_count
    # Keeping only separators, every line must read as exactly ncols - 1 commas and a newline
    # (a line template is ncols bytes long).
    skeleton = block.translate(None, _ALL_BUT_SEPARATORS)
    lines, rest = divmod(len(skeleton), ncols)
    if rest or skeleton != (b"," * (ncols - 1) + b"\n") * lines:
        return False
    fields = block.replace(b"\n", b",").split(b",")
    fields.pop()  # the empty string after the last newline
    pairs = Counter(
        zip(
            fields[layout.patient_index :: ncols],
            fields[layout.event_type_index :: ncols],
            strict=True,
        )
    )
    # Checking the few distinct keys is cheaper than searching every field for b"".
    for patient, event_type in pairs:
        if not patient or not event_type:
            return False
    tally.pairs.update(pairs)
    tally.rows += lines
    tally.blank_lines += blank_lines
    return True


def _count_exact(block: bytes, layout: CsvLayout, tally: _Tally) -> None:
    """Count a block row by row: plain lines split at commas, others read by the csv module."""
    ncols = layout.field_count
    pidx = layout.patient_index
    eidx = layout.event_type_index
    # A record is never longer than its block; without this csv rejects fields over 128 KiB
    # that the fast path accepts. The limit is process-wide, so it is only ever raised.
    if csv.field_size_limit() < len(block):
        csv.field_size_limit(len(block))
    parts = block.split(b"\n")
    last = parts.pop()
    # csv needs each line's newline to keep the newlines inside quoted fields.
    lines = [part + b"\n" for part in parts]
    if last:
        lines.append(last)
    source = iter(lines)
    for line in source:
        if b'"' not in line and b"\r" not in line:
            text = line[:-1] if line.endswith(b"\n") else line
            if not text:
                tally.blank_lines += 1
                continue
            fields = text.split(b",")
            tally.rows += 1
            if len(fields) == ncols and fields[pidx] and fields[eidx]:
                tally.pairs[(fields[pidx], fields[eidx])] += 1
            else:
                tally.add_malformed(text)
            continue
        record = [line]
        try:
            row = next(csv.reader(_pull_lines(line, source, record)), [])
        except csv.Error:
            row = None
        if row == []:
            tally.blank_lines += 1  # a blank line ending in "\r\n"
            continue
        tally.rows += 1
        if row is not None and len(row) == ncols and row[pidx] and row[eidx]:
            patient = row[pidx].encode("utf-8", errors="surrogateescape")
            event_type = row[eidx].encode("utf-8", errors="surrogateescape")
            tally.pairs[(patient, event_type)] += 1
        else:
            tally.add_malformed(b"".join(record).rstrip(b"\r\n"))


def _pull_lines(first: bytes, source: Iterator[bytes], record: list[bytes]) -> Iterator[str]:
    """Give csv the lines of one record, taking more from `source` only as csv asks for them."""
    # surrogateescape round-trips any byte, so values encode back to the fast path's bytes.
    yield first.decode("utf-8", errors="surrogateescape")
    for line in source:
        record.append(line)
        yield line.decode("utf-8", errors="surrogateescape")


def _text_lines(text: str) -> list[str]:
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return [line for line in lines if line]
