"""Fixtures for the client tests, and the aioresponses shim."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest.mock import Mock

import aioresponses.core
import pytest
from aiohttp import ClientResponse
from hypothesis import HealthCheck, settings

from export_client import _counting

# The counting-core fixture below is function-scoped, and its state (which core counts) holds
# for every example of a test, so hypothesis need not warn about it.
settings.register_profile(
    "export_counter", suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("export_counter")


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


@pytest.fixture(params=["compiled", "pure Python"])
def counting_core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once with the compiled kernel (where it is built) and once without it."""
    if request.param == "compiled":
        if _counting._kernel is None:
            pytest.skip("the compiled kernel is not built here (or is switched off)")
    else:
        monkeypatch.setattr(_counting, "_kernel", None)
    return str(request.param)
