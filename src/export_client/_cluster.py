"""--cluster: an export's downloads as Dask tasks, on a scheduler's workers or a LocalCluster.

Discovery and the reduce stay here, on the client; each download is one task,
`count_on_worker` (`_task.py`), which does on a worker what the local orchestrator does for
a download, and returns its verified `DownloadResult` or raises. dask and distributed (the
optional extra `dask`) are imported by this module only, and only when a cluster is used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._defaults import available_cores
from ._exceptions import DownloadFailedError, ExportClientError
from ._metadata import DownloadInfo
from ._progress import ProgressListener
from ._results import DownloadResult
from ._task import ClusterProgress, DownloadJob, count_on_worker

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "INSTALL_HINT",
    "ClusterAddress",
    "ClusterError",
    "count_on_cluster",
    "dask_installed",
    "local_cluster_settings",
]

INSTALL_HINT = "uv sync --extra dask, or pip install 'export-counter[dask]'"


class ClusterError(ExportClientError):
    """The Dask cluster could not be used: not installed, not reachable, without workers, or
    lost during the run."""


def dask_installed() -> bool:
    """Whether the optional extra is installed (without importing it, which takes a while)."""
    return importlib.util.find_spec("distributed") is not None


@dataclass(frozen=True)
class ClusterAddress:
    """Where the tasks run: a scheduler's address, or `workers` local worker processes."""

    scheduler: str | None  # None: a LocalCluster started for this run
    workers: int = 0

    @classmethod
    def parse(cls, text: str) -> ClusterAddress:
        """`local`, `local:N`, or a scheduler address as Dask takes it (`tcp://host:8786`)."""
        text = text.strip()
        if text == "local":
            return cls(None, available_cores())
        if text.startswith("local:"):
            count = text.removeprefix("local:")
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"{text!r}: local:N needs a number of workers N of 1 or more")
            return cls(None, int(count))
        if not text or any(character.isspace() for character in text):
            raise ValueError(f"{text!r} is not a Dask scheduler address (tcp://host:8786)")
        return cls(text)

    @property
    def local(self) -> bool:
        return self.scheduler is None

    @property
    def on_this_machine(self) -> bool:
        """Whether the workers run here: a LocalCluster, or a scheduler on loopback."""
        if self.scheduler is None:
            return True
        # Dask takes `tcp://host:port`, other schemes, and a bare `host:port`.
        return _is_loopback(urlsplit("//" + self.scheduler.split("://", 1)[-1]).hostname)

    def reaches(self, server: str) -> bool:
        """Whether the workers can reach `server`: not where it is on this machine's loopback
        and they are elsewhere (each would find its own loopback)."""
        return self.on_this_machine or not _is_loopback(urlsplit(server).hostname)

    def __str__(self) -> str:
        return self.scheduler or f"local:{self.workers}"


def _is_loopback(host: str | None) -> bool:
    if host is None or host == "localhost":
        return host is not None
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_cluster_settings(workers: int, *, processes: bool = True) -> dict[str, Any]:
    """The settings of a LocalCluster for one run: `workers` single-threaded workers (each one
    download at a time), no dashboard, Dask's logging of errors only; threads instead of
    processes where processes are not the point (tests)."""
    return {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": processes,
        "dashboard_address": None,
        # The scheduler serves its health routes over HTTP even so: on a free loopback port,
        # not on 8787 (which another cluster may hold) of every interface.
        "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"},
        # Dask's warnings here are its own shutdown (tasks cancelled by Ctrl-C or a failure)
        # or a lost worker, which the client reports itself, as a retry of the download.
        "silence_logs": logging.ERROR,
        # Loopback TCP even with threads, so the tasks meet the network as on a real cluster.
        "protocol": "tcp://",
        "host": "127.0.0.1",
        # Each worker process runs this module's dask_setup as it starts.
        **({"preload": [__name__]} if processes else {}),
    }


def dask_setup(worker: object) -> None:
    """Run in each worker process of a LocalCluster as it starts (its preload): Ctrl-C at a
    terminal reaches every process of its group, and the client stops its workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def count_on_cluster(
    address: ClusterAddress,
    job: DownloadJob,
    downloads: Sequence[DownloadInfo],
    *,
    progress: ProgressListener,
    connect_seconds: float,
) -> list[DownloadResult]:
    """Each download counted by one task on the cluster; the results in the given order.

    The first failure cancels the tasks not yet finished and is raised, a task's own
    `ExportClientError` as it was raised on the worker.
    """
    _check_installed()
    from distributed import as_completed

    async with _connected(address, connect_seconds) as client:
        topic = f"export-counter-{uuid.uuid4()}"
        watcher = ClusterProgress(progress)
        client.subscribe_topic(topic, watcher.event)
        job = job.with_topic(topic)
        run = uuid.uuid4().hex[:12]
        # Each run and download has a key of its own, so that no two tasks, of this run or of
        # another client's, are ever taken for one. The largest go first (by the rows
        # announced), so that the last to finish is a small one, not a large one started late.
        largest_first = sorted(enumerate(downloads), key=lambda entry: -entry[1].rows)
        pending = {
            client.submit(count_on_worker, job, info, key=f"count-{run}-{index}", pure=False): info
            for index, info in largest_first
        }
        results: dict[str, DownloadResult] = {}
        try:
            async for future in as_completed(list(pending), loop=client.loop):
                info = pending.pop(future)
                results[info.id] = await _result(future, info)
                # Forgotten once here: a result that a dying worker held is not computed again.
                future.release()
                watcher.finished(results[info.id])
        finally:
            # The run's outcome is decided by now: a scheduler connection that broke must not
            # replace a download's error, or a complete result, with its own.
            with contextlib.suppress(Exception):
                if pending:
                    await client.cancel(list(pending), reason="another download failed")
                client.unsubscribe_topic(topic)
    return [results[info.id] for info in downloads]


def _check_installed() -> None:
    if not dask_installed():
        raise ClusterError(f"--cluster needs Dask, an optional extra: {INSTALL_HINT}.")


async def _result(future: Any, info: DownloadInfo) -> DownloadResult:
    from distributed import CancelledError
    from distributed.scheduler import KilledWorker

    try:
        result: DownloadResult = await future
    except KilledWorker as error:
        raise DownloadFailedError(
            info.id, f"every worker that ran it died ({error}); Dask gave it up."
        ) from error
    except CancelledError as error:
        raise ClusterError(
            f"The Dask scheduler dropped the task of download {info.id} ({error})."
        ) from error
    return result


@asynccontextmanager
async def _connected(address: ClusterAddress, seconds: float) -> AsyncIterator[Client]:
    """A Dask client of the scheduler at `address`, or of a LocalCluster for this run."""
    import dask
    from distributed import Client, LocalCluster

    if address.scheduler is None:
        settings = local_cluster_settings(address.workers)
        # A worker is given its next download when it is done with one, not a second one to
        # hold meanwhile (Dask's default of 1.1 tasks per thread), which another worker may
        # then wait for at the end of the run.
        async with AsyncExitStack() as stack:
            try:
                with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
                    cluster = LocalCluster(asynchronous=True, **settings)
                    await stack.enter_async_context(cluster)  # its scheduler reads the setting
                client = Client(cluster, asynchronous=True, set_as_default=False)
                await stack.enter_async_context(client)
            except (OSError, TimeoutError, RuntimeError) as error:
                raise ClusterError(
                    f"A local Dask cluster of {address.workers} workers did not start ({error})."
                ) from error
            yield client
        return
    try:
        client = await Client(
            address.scheduler, asynchronous=True, timeout=seconds, set_as_default=False
        )
    except (OSError, ValueError, TypeError) as error:
        raise ClusterError(
            f"Cannot reach the Dask scheduler at {address.scheduler} ({error})."
        ) from None
    async with client:
        try:
            await client.wait_for_workers(1, timeout=seconds)
        except (OSError, TimeoutError) as error:
            raise ClusterError(
                f"The Dask scheduler at {address.scheduler} has no workers ({error})."
            ) from None
        yield client
