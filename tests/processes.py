"""Processes as /proc shows them (Linux), for tests that check which processes are left."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def children(pid: int) -> list[int]:
    """The child processes of `pid` (none once it is gone)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += map(int, (task / "children").read_text().split())
    return found


def threads(pid: int) -> list[int]:
    """The threads of `pid`, its main thread first (none once it is gone)."""
    try:
        return sorted(int(task.name) for task in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []


def command_line(pid: int) -> list[str]:
    """The arguments `pid` runs with; empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def running(pid: int) -> bool:
    """Whether `pid` still runs: a zombie waiting for a parent that does not reap has ended."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def still_running(pids: Iterable[int], timeout: float) -> list[int]:
    """Those of `pids` still running after waiting up to `timeout` seconds for them to end."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while any(map(running, pids)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [pid for pid in pids if running(pid)]


def wait_for(found: Callable[[], list[int]], timeout: float = 30.0) -> list[int]:
    """What `found` returns, once it is not empty; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := found()):
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.02)
    return result


def kill_leftovers(pids: Iterable[int]) -> None:
    """SIGKILL those of `pids` still running: what a failed test must not leave behind."""
    for pid in pids:
        if running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
