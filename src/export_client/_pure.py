"""The pure-Python counting core: the kernel's fallback, and its reference.

It tries a fast path on each sub-block of quote-free lines: it checks with C-speed bytes
operations that every line has exactly the header's number of fields, splits all fields at
once and counts the pairs with `collections.Counter` (or, for statistics, `count_stats_fast`);
blank lines are dropped first. A sub-block that fails a check (a malformed row, a stray
``\\r``) and any block holding a quote goes through the exact path, which reads quoted records
with the `csv` module and classifies each row.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterator

from ._layout import CsvLayout
from ._lines import Piece
from ._results import BlockCount
from ._stats import Statistics, parse_time, parse_value
from ._stats_core import add_row, count_stats_fast

__all__ = ["count_block_pure"]

# Small enough for the split fields to stay in the CPU cache, which about doubles the speed
# compared with splitting a whole 1 MiB block at once.
_SUB_BLOCK_BYTES = 128 << 10
_STATS_SUB_BLOCK_BYTES = 1 << 20

_ALL_BUT_SEPARATORS = bytes(b for b in range(256) if b not in b",\n")
# A run of line ends: every "\n" after the first ends a blank line.
_BLANK_RUNS = re.compile(rb"\n\n+")


def count_block_pure(
    block: Piece, layout: CsvLayout, stats: Statistics | None = None
) -> BlockCount:
    """`count_block` in pure Python: the kernel's fallback and its reference."""
    if isinstance(block, memoryview):
        block = block.tobytes()
    counted = BlockCount(groups=None if stats is None else {})
    if b'"' in block:
        # Newlines may sit inside quoted fields, so the block cannot be cut into sub-blocks.
        _count_exact(block, layout, counted, stats)
    else:
        # Statistics cost per distinct (group, value) pair of a sub-block as well as per row:
        # larger sub-blocks share that cost among more rows.
        size = _SUB_BLOCK_BYTES if stats is None else _STATS_SUB_BLOCK_BYTES
        for sub_block in _sub_blocks(block, size):
            if not _count_fast(sub_block, layout, counted, stats):
                _count_exact(sub_block, layout, counted, stats)
    return counted


def _sub_blocks(block: bytes, piece: int) -> Iterator[bytes]:
    """Cut a quote-free block at newlines into pieces of about `piece` bytes."""
    size = len(block)
    if size <= piece:
        if block:
            yield block
        return
    start = 0
    while start < size:
        end = block.rfind(b"\n", start, start + piece) + 1
        if end <= start:  # one line longer than a sub-block
            end = block.find(b"\n", start + piece) + 1 or size
        yield block[start:end]
        start = end


def _count_fast(
    block: bytes, layout: CsvLayout, counted: BlockCount, stats: Statistics | None = None
) -> bool:
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
    if stats is not None:
        groups = count_stats_fast(fields, layout, stats)
        if groups is None:
            return False
        counted.add_groups(groups)
        counted.add_pairs({key: group.count for key, group in groups.items()})
        counted.rows += lines
        counted.blank_lines += blank_lines
        return True
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


def _count_exact(
    block: bytes, layout: CsvLayout, counted: BlockCount, stats: Statistics | None = None
) -> None:
    """Count a block row by row: plain lines split at commas, others read by the csv module."""
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
            if text:
                _add_row(counted, text.split(b","), text, layout, stats)
            else:
                counted.blank_lines += 1
            continue
        record = [line]
        try:
            row = next(csv.reader(_pull_lines(line, source, record)), [])
        except csv.Error:
            row = None
        if row == []:
            counted.blank_lines += 1  # a blank line ending in "\r\n"
            continue
        # surrogateescape gives back the very bytes, as the other paths see them.
        fields = [] if row is None else [f.encode("utf-8", "surrogateescape") for f in row]
        _add_row(counted, fields, b"".join(record).rstrip(b"\r\n"), layout, stats)


def _add_row(
    counted: BlockCount,
    fields: list[bytes],
    line: bytes,
    layout: CsvLayout,
    stats: Statistics | None,
) -> None:
    """Counts one row (`fields`, []: unreadable) into `counted`, or as malformed."""
    counted.rows += 1
    if len(fields) == layout.field_count:
        key = (fields[layout.patient_index], fields[layout.event_type_index])
        if key[0] and key[1]:
            if stats is None:
                counted.pairs[key] = counted.pairs.get(key, 0) + 1
                return
            assert layout.time_index is not None
            assert layout.value_index is not None
            value = parse_value(fields[layout.value_index])
            moment = parse_time(fields[layout.time_index])
            if value is not None and moment is not None:
                assert counted.groups is not None
                add_row(counted.groups, key, value, moment, stats)
                counted.pairs[key] = counted.pairs.get(key, 0) + 1
                return
    counted.add_malformed(line)


def _pull_lines(first: bytes, source: Iterator[bytes], record: list[bytes]) -> Iterator[str]:
    """Give csv the lines of one record, taking more from `source` only as csv asks for them."""
    # surrogateescape round-trips any byte, so values encode back to the fast path's bytes.
    yield first.decode("utf-8", errors="surrogateescape")
    for line in source:
        record.append(line)
        yield line.decode("utf-8", errors="surrogateescape")
