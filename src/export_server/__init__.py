"""A mock export server: the export API of the reference server, faster, cached and faulty."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import create_app
    from ._catalog import (
        REFERENCE_CATALOG,
        Catalog,
        DownloadSpec,
        ExportSpec,
        download_uuid,
    )
    from ._exceptions import (
        CacheDirectoryError,
        ExportServerError,
        InheritedSocketError,
        ListenError,
        PortInUseError,
        ServerStartError,
        WorkerCrashedError,
        WorkerError,
    )
    from ._faults import FaultConfig
    from ._generate import CSV_HEADER, generate_body
    from ._pool import WorkerPool
    from ._process import ServerProcess, start_server_process
    from ._server import running_server, serve

# Imported on first use: a generation worker process imports this package too, and must not pay
# for aiohttp (nor be interrupted while it imports it) to generate bodies.
_MODULES = {
    "_app": ("create_app",),
    "_catalog": ("REFERENCE_CATALOG", "Catalog", "DownloadSpec", "ExportSpec", "download_uuid"),
    "_exceptions": (
        "CacheDirectoryError",
        "ExportServerError",
        "InheritedSocketError",
        "ListenError",
        "PortInUseError",
        "ServerStartError",
        "WorkerCrashedError",
        "WorkerError",
    ),
    "_faults": ("FaultConfig",),
    "_generate": ("CSV_HEADER", "generate_body"),
    "_process": ("ServerProcess", "start_server_process"),
    "_server": ("running_server", "serve"),
    "_pool": ("WorkerPool",),
}
_HOMES = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "CSV_HEADER",
    "REFERENCE_CATALOG",
    "CacheDirectoryError",
    "Catalog",
    "DownloadSpec",
    "ExportServerError",
    "ExportSpec",
    "FaultConfig",
    "InheritedSocketError",
    "ListenError",
    "PortInUseError",
    "ServerProcess",
    "ServerStartError",
    "WorkerCrashedError",
    "WorkerError",
    "WorkerPool",
    "create_app",
    "download_uuid",
    "generate_body",
    "running_server",
    "serve",
    "start_server_process",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'export_server' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
