"""The counting core: which core counts, and `count_block`, which counts a block with it.

`count_block` counts a block with the compiled kernel (`_kernel.c`) where it was built, and
with the pure-Python core (`_pure.py`) where it was not, or where the kernel declines the block
(it takes only quote-free lines, and for statistics integer values). Both give the same result;
the pure core is the reference.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ._layout import CsvLayout, shown
from ._lines import Piece
from ._pure import count_block_pure
from ._results import MAX_MALFORMED_EXAMPLES, BlockCount
from ._stats import GroupStats, Statistics

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


def count_block(block: Piece, layout: CsvLayout, stats: Statistics | None = None) -> BlockCount:
    """Count the (patient_id, event_type) pairs of whole CSV lines (the last may lack "\\n"),
    and with `stats` each pair's statistics too."""
    if _kernel is not None:
        counted = _count_compiled(_kernel, block, layout, stats)
        if counted is not None:
            return counted
    return count_block_pure(block, layout, stats)


def _count_compiled(
    kernel: ModuleType, block: Piece, layout: CsvLayout, stats: Statistics | None
) -> BlockCount | None:
    """The kernel's count, or None where it declines the block."""
    columns = (layout.field_count, layout.patient_index, layout.event_type_index)
    if stats is None:
        counted = kernel.count_lines(block, *columns, MAX_MALFORMED_EXAMPLES)
        if counted is None:
            return None
        pairs, rows, malformed, blank_lines, examples = counted
        return BlockCount(pairs, rows, malformed, [shown(line) for line in examples], blank_lines)
    if not hasattr(kernel, "count_stats"):
        return None
    counted = kernel.count_stats(
        block,
        *columns,
        layout.time_index,
        layout.value_index,
        stats.kernel_bounds,
        MAX_MALFORMED_EXAMPLES,
    )
    if counted is None:
        return None
    found, rows, malformed, blank_lines, examples = counted
    groups = {key: GroupStats(*figures) for key, figures in found.items()}
    pairs = {key: group.count for key, group in groups.items()}
    return BlockCount(
        pairs, rows, malformed, [shown(line) for line in examples], blank_lines, groups
    )
