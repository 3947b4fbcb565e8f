"""Generation in worker processes, so bodies are generated on every core and never on the loop.

Each new stream goes to the least loaded live worker (a `WorkerLink`). Every slot of the pool
has a supervisor task that starts the slot's worker, waits for it to die, and starts the next
one, with a backoff and a limit for workers that keep dying. Streams waiting for a live worker
wait on a condition that the supervisors notify.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from ._catalog import DownloadSpec
from ._exceptions import WorkerCrashedError, WorkerError
from ._link import WorkerLink

__all__ = ["WorkerPool"]

logger = logging.getLogger("export_server.workers")

# Failures of one slot in a row (failed starts, and workers that die within _STABLE_AFTER
# seconds of their start) before its supervisor gives up on it.
_RESPAWN_LIMIT = 5
# Seconds before the start that follows the second failure in a row, doubled for each further.
_RESPAWN_BACKOFF = 0.1
_STABLE_AFTER = 10.0
# How long a new stream waits for a replacement when every worker is dead.
_WAIT_FOR_RESPAWN = 10.0


@dataclass(eq=False)
class _Slot:
    worker: WorkerLink
    supervised: bool = True
    """False once the slot's supervisor has ended: its worker will not be replaced."""


class WorkerPool:
    """Long-lived generation processes; each new stream goes to the least loaded one."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"A worker pool needs at least one worker, got {size}.")
        self.size = size
        self._slots: list[_Slot] = []
        self._supervisors: list[asyncio.Task[None]] = []
        self._closing = False
        self._stopping = asyncio.Event()
        self._changed = asyncio.Condition()

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers, in slot order (a dead one until it is replaced)."""
        return [slot.worker.process.pid for slot in self._slots]

    @property
    def loads(self) -> list[int]:
        """How many streams each worker is generating right now, in slot order."""
        return [slot.worker.load for slot in self._slots]

    async def start(self) -> None:
        """Start the worker processes, and a supervisor for each.

        Raises WorkerError if one cannot be started; the ones already started are stopped then.
        """
        # New ones, for a pool started again, perhaps in another event loop.
        self._closing = False
        self._stopping = asyncio.Event()
        self._changed = asyncio.Condition()
        try:
            for _ in range(self.size):
                slot = _Slot(await WorkerLink.start())
                self._slots.append(slot)
                self._supervisors.append(asyncio.create_task(self._supervise(slot)))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every worker; their unfinished streams fail."""
        self._closing = True
        self._stopping.set()
        for slot in self._slots:
            slot.worker.close()
        # Each supervisor stops its slot's worker, also one that it was just starting.
        supervisors, self._supervisors = self._supervisors, []
        await asyncio.gather(*supervisors)
        self._slots = []
        await self._notify()

    async def stream(
        self, download: DownloadSpec, *, chunk_size: int = 32768
    ) -> AsyncGenerator[bytes, None]:
        """Yield the body of a download as a worker generates it.

        Raises WorkerError (or WorkerCrashedError) if the body cannot be completed. Closing the
        iterator early (use `contextlib.aclosing`) cancels the job.
        """
        worker = await self._live_worker()
        async with contextlib.aclosing(worker.stream(download, chunk_size=chunk_size)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _supervise(self, slot: _Slot) -> None:
        """Replace the slot's worker whenever it dies, until the pool stops or the slot fails."""
        failures = 0
        try:
            while not self._closing:
                worker = slot.worker
                await worker.reader_task
                if self._closing:
                    return
                logger.error("Worker process %d died; starting a new one.", worker.process.pid)
                await worker.stop()
                # A worker that dies soon after its start counts as a failed start, so that a
                # worker that cannot run at all is not restarted forever.
                quick = time.monotonic() - worker.started < _STABLE_AFTER
                failures = failures + 1 if quick else 1
                replacement = await self._restart(failures)
                if replacement is None:
                    return
                slot.worker, failures = replacement
                await self._notify()
        finally:
            slot.supervised = False
            await slot.worker.stop()
            await self._notify()

    async def _restart(self, failures: int) -> tuple[WorkerLink, int] | None:
        """A new worker and the failures in a row before it; None if stopped or given up."""
        while failures <= _RESPAWN_LIMIT:
            if failures > 1:
                with contextlib.suppress(TimeoutError):
                    delay = _RESPAWN_BACKOFF * 2 ** (failures - 2)
                    await asyncio.wait_for(self._stopping.wait(), delay)
            if self._closing:
                return None
            try:
                return await WorkerLink.start(), failures
            except WorkerError as exc:
                logger.warning("%s (attempt %d of %d)", exc, failures, _RESPAWN_LIMIT)
                failures += 1
        alive = sum(not slot.worker.dead for slot in self._slots)
        logger.error(
            "Giving up on a worker slot after %d failed starts; %d of %d workers are running.",
            _RESPAWN_LIMIT,
            alive,
            self.size,
        )
        return None

    async def _notify(self) -> None:
        """Wake the streams waiting for a live worker: the workers changed."""
        async with self._changed:
            self._changed.notify_all()

    def _settled(self) -> bool:
        """Whether a new stream can be given a worker, or failed, without waiting."""
        return (
            self._closing
            or any(not slot.worker.dead for slot in self._slots)
            or not any(slot.supervised for slot in self._slots)
        )

    async def _live_worker(self) -> WorkerLink:
        """The least loaded live worker; waits a while for a replacement if none is alive."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_WAIT_FOR_RESPAWN):
                    await self._changed.wait_for(self._settled)
        if self._closing or not self._slots:
            raise WorkerError("The worker pool is not running.")
        alive = [slot.worker for slot in self._slots if not slot.worker.dead]
        if not alive:
            raise WorkerCrashedError(
                "Every worker process has died and none could be started again."
            )
        return min(alive, key=lambda worker: worker.load)
