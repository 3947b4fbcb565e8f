"""A mock export server: the export API of the reference server, faster, cached and faulty."""

from ._app import create_app
from ._catalog import REFERENCE_CATALOG, Catalog, DownloadSpec, ExportSpec, download_uuid
from ._exceptions import ExportServerError, PortInUseError, WorkerCrashedError, WorkerError
from ._faults import FaultConfig
from ._generate import CSV_HEADER, generate_body
from ._server import running_server, serve
from ._workers import WorkerPool

__all__ = [
    "CSV_HEADER",
    "REFERENCE_CATALOG",
    "Catalog",
    "DownloadSpec",
    "ExportServerError",
    "ExportSpec",
    "FaultConfig",
    "PortInUseError",
    "WorkerCrashedError",
    "WorkerError",
    "WorkerPool",
    "create_app",
    "download_uuid",
    "generate_body",
    "running_server",
    "serve",
]
