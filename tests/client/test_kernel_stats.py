"""Tests for count_stats, the compiled kernel's statistics mode, against a plain reference.

Skipped where the kernel is not built (no C compiler at install time), like test_kernel.py.
"""

from __future__ import annotations

import pytest

kernel = pytest.importorskip("export_client._kernel")


def test_a_released_memoryview_is_refused() -> None:
    """Its bytes may be gone with the release: the kernel must not look at them first."""
    for _ in range(100):
        view = memoryview(
            b"".join([b"P,2025-08-26T00:00:02.760570Z,e,1\n"] * 100)
        )  # the only owner
        view.release()
        with pytest.raises(ValueError, match="released"):
            kernel.count_lines(view, 4, 0, 2, 5)
