"""The counting core: (patient_id, event_type) pairs of CSV blocks, fast and exact.

`count_block` counts a block with the compiled kernel (`_kernel.c`) where it was built, and
with the pure-Python core below where it was not, or where the kernel declines the block (it
takes only quote-free lines). Both give the same result; the pure core is the reference.

The pure core tries a fast path on each sub-block of quote-free lines: it checks with C-speed
bytes operations that every line has exactly the header's number of fields, splits all fields
at once and counts the pairs with `collections.Counter`; blank lines are dropped first. A
sub-block that fails a check (a malformed row, a stray ``\\r``) and any block holding a quote
goes through the exact path, which reads quoted records with the `csv` module and classifies
each row.
"""

from __future__ import annotations

import csv
import importlib
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType

from ._layout import CsvLayout, shown
from ._lines import Piece

__all__ = ["COUNTING_CORE", "PURE_PYTHON_ENV", "BlockCount", "count_block", "count_block_pure"]

# Set to anything but "" or "0" to count with the pure-Python core even where the kernel is
# built, as AIOHTTP_NO_EXTENSIONS does for aiohttp: to rule the kernel out.
PURE_PYTHON_ENV = "EXPORT_COUNTER_PURE_PYTHON"


def _load_kernel() -> ModuleType | None:
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    try:
        return importlib.import_module("export_client._kernel")
    except ImportError:
        return None  # not built: no C compiler at install time


_kernel = _load_kernel()
COUNTING_CORE = "compiled" if _kernel is not None else "pure Python"
"""Which core counts in this process: "compiled" or "pure Python"."""

MAX_MALFORMED_EXAMPLES = 5

# Small enough for the split fields to stay in the CPU cache, which about doubles the speed
# compared with splitting a whole 1 MiB block at once.
_SUB_BLOCK_BYTES = 128 << 10

_ALL_BUT_SEPARATORS = bytes(b for b in range(256) if b not in b",\n")
# A run of line ends: every "\n" after the first ends a blank line.
_BLANK_RUNS = re.compile(rb"\n\n+")


@dataclass
class BlockCount:
    """The counts of a block of lines, or merged, of many: a download's, say."""

    pairs: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    rows: int = 0  # data rows seen, malformed included, blank lines excluded
    malformed: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    blank_lines: int = 0

    def merge(self, other: BlockCount) -> None:
        """Adds `other`'s counts to these (examples up to the first few)."""
        self.add_pairs(other.pairs)
        self.rows += other.rows
        self.malformed += other.malformed
        self.blank_lines += other.blank_lines
        room = MAX_MALFORMED_EXAMPLES - len(self.malformed_examples)
        if room > 0:
            self.malformed_examples.extend(other.malformed_examples[:room])

    def add_pairs(self, pairs: Mapping[tuple[bytes, bytes], int]) -> None:
        own = self.pairs
        for key, count in pairs.items():
            own[key] = own.get(key, 0) + count

    def add_malformed(self, line: bytes) -> None:
        self.malformed += 1
        if len(self.malformed_examples) < MAX_MALFORMED_EXAMPLES:
            self.malformed_examples.append(shown(line))

    def decoded_pairs(self) -> dict[tuple[str, str], int]:
        """The pairs with patient ids and event types decoded as UTF-8 (bad bytes replaced)."""
        decoded: Counter[tuple[str, str]] = Counter()
        for (patient, event_type), count in self.pairs.items():
            key = (
                patient.decode("utf-8", errors="replace"),
                event_type.decode("utf-8", errors="replace"),
            )
            decoded[key] += count
        return dict(decoded)


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
                pairs, rows, malformed, [shown(line) for line in examples], blank_lines
            )
    return count_block_pure(block, layout)


def count_block_pure(block: Piece, layout: CsvLayout) -> BlockCount:
    """`count_block` in pure Python: the kernel's fallback and its reference."""
    if isinstance(block, memoryview):
        block = block.tobytes()
    counted = BlockCount()
    if b'"' in block:
        # Newlines may sit inside quoted fields, so the block cannot be cut into sub-blocks.
        _count_exact(block, layout, counted)
    else:
        for sub_block in _sub_blocks(block):
            if not _count_fast(sub_block, layout, counted):
                _count_exact(sub_block, layout, counted)
    return counted


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


def _count_fast(block: bytes, layout: CsvLayout, counted: BlockCount) -> bool:
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
            counted.blank_lines += blank_lines
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
    counted.add_pairs(pairs)
    counted.rows += lines
    counted.blank_lines += blank_lines
    return True


def _count_exact(block: bytes, layout: CsvLayout, counted: BlockCount) -> None:
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
                counted.blank_lines += 1
                continue
            fields = text.split(b",")
            counted.rows += 1
            if len(fields) == ncols and fields[pidx] and fields[eidx]:
                key = (fields[pidx], fields[eidx])
                counted.pairs[key] = counted.pairs.get(key, 0) + 1
            else:
                counted.add_malformed(text)
            continue
        record = [line]
        try:
            row = next(csv.reader(_pull_lines(line, source, record)), [])
        except csv.Error:
            row = None
        if row == []:
            counted.blank_lines += 1  # a blank line ending in "\r\n"
            continue
        counted.rows += 1
        if row is not None and len(row) == ncols and row[pidx] and row[eidx]:
            patient = row[pidx].encode("utf-8", errors="surrogateescape")
            event_type = row[eidx].encode("utf-8", errors="surrogateescape")
            key = (patient, event_type)
            counted.pairs[key] = counted.pairs.get(key, 0) + 1
        else:
            counted.add_malformed(b"".join(record).rstrip(b"\r\n"))


def _pull_lines(first: bytes, source: Iterator[bytes], record: list[bytes]) -> Iterator[str]:
    """Give csv the lines of one record, taking more from `source` only as csv asks for them."""
    # surrogateescape round-trips any byte, so values encode back to the fast path's bytes.
    yield first.decode("utf-8", errors="surrogateescape")
    for line in source:
        record.append(line)
        yield line.decode("utf-8", errors="surrogateescape")
