"""Fixtures for the client tests, and the aioresponses shim."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest.mock import Mock

import aioresponses.core
import pytest
from aiohttp import ClientResponse


class _ClientResponseWithStreamWriter(ClientResponse):
    """aioresponses 0.7.9 builds responses without the `stream_writer` that aiohttp 3.14
    requires (aioresponses issue #289; the fix, PR #288, is unmerged). This supplies it.
    Remove this class and the fixture below once aioresponses releases the fix."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", Mock(output_size=0))
        super().__init__(*args, **kwargs)


@pytest.fixture
def mocked() -> Iterator[aioresponses.aioresponses]:
    """An `aioresponses` mock of the network that works on aiohttp 3.14."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aioresponses.core, "ClientResponse", _ClientResponseWithStreamWriter)
        with aioresponses.aioresponses() as mock:
            yield mock
