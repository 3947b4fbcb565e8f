"""The counting pool: pieces of whole lines counted on threads, each where it lies."""

from __future__ import annotations

import pytest

from export_client._counting import count_block
from export_client._layout import CsvLayout
from export_client._lines import Piece
from export_client._pool import CountingPool

LAYOUT = CsvLayout(field_count=4, patient_index=0, event_type_index=2)
ROWS = [b"P00%d,2025-01-01T00:00:00Z,bp_sys,12%d\n" % (i % 3, i) for i in range(9)]


@pytest.mark.parametrize("cuts", [[9], [1, 9], [1, 2, 5, 9]])
async def test_pieces_count_as_their_lines_joined(cuts: list[int]) -> None:
    body = b"".join(ROWS)
    pieces: list[Piece] = []
    start = 0
    for cut in cuts:
        # Views of one chunk and bytes, as the splitter gives them.
        piece = b"".join(ROWS[start:cut])
        pieces.append(memoryview(piece) if len(pieces) % 2 else piece)
        start = cut
    async with CountingPool(2) as pool:
        counted = await pool.submit(pieces, LAYOUT)
    assert counted == count_block(body, LAYOUT)


async def test_submit_needs_the_context_manager() -> None:
    with pytest.raises(RuntimeError, match="context manager"):
        CountingPool(1).submit([ROWS[0]], LAYOUT)
