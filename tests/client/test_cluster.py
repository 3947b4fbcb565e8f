"""--cluster: the real CLI's downloads as Dask tasks, on a LocalCluster, against the real server.

A cluster of threads (one for the module, reached over loopback TCP as a remote scheduler
would be) where processes are not the point; `local:N` worker processes where they are: the
committed counts of `small`, `--mock`, and a worker killed mid-run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from export_client._progress import NoProgress, Retry
from export_client._results import DownloadResult
from export_client._task import ClusterProgress, WorkerProgress
from export_server import FaultConfig, running_server

from ..processes import children, command_line, kill_leftovers, still_running, wait_for
from .test_cli import MEDIUM, TINY, expected_json, invoke, on_a_terminal

if TYPE_CHECKING:
    from distributed import LocalCluster

distributed = pytest.importorskip("distributed", reason="needs the extra: uv sync --extra dask")

from export_client._cluster import ClusterAddress, local_cluster_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "export_client"]


@pytest.fixture(scope="module")
def threads_cluster() -> Iterator[LocalCluster]:
    """A LocalCluster of two single-threaded workers, threads of this process."""
    with distributed.LocalCluster(**local_cluster_settings(2, processes=False)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def scheduler(threads_cluster: LocalCluster) -> str:
    return str(threads_cluster.scheduler_address)


def wait_until_idle(cluster: LocalCluster) -> None:
    """Waits for the tasks that a failed run cancelled: one already running on a worker's
    thread runs to its end, and must not outlive the server that its test stops."""

    def idle() -> list[int]:
        workers = cluster.workers.values()
        return [1] if all(worker.state.executing_count == 0 for worker in workers) else []

    wait_for(idle)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(catalog=TINY, workers=1) as url:
        yield url


@pytest.fixture(scope="module")
def reference_server() -> Iterator[str]:
    with running_server(workers=2) as url:
        yield url


@pytest.fixture(scope="module")
def faulty_server() -> Iterator[str]:
    faults = FaultConfig(fail_rate=0.5, error_rate=0.2, seed=11, retry_after=0)
    with running_server(catalog=MEDIUM, workers=2, faults=faults) as url:
        yield url


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, as `local:N` needs: its workers are its children."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def retries_in(summary: str) -> int:
    return int(summary.split(" retries")[0].rsplit(" ", 1)[1])


def test_counts_as_the_local_client_does(server: str, scheduler: str) -> None:
    code, out, err = invoke("tiny", "-s", server, "--cluster", scheduler)
    assert code == 0, err
    assert out == expected_json("tiny") + "\n"
    assert err == ""


def test_demo_counts_as_committed(reference_server: str, scheduler: str) -> None:
    code, out, err = invoke("demo", "-s", reference_server, "--cluster", scheduler)
    assert code == 0, err
    assert out == (ROOT / "demo.json").read_text()


def test_small_on_worker_processes_counts_as_committed(reference_server: str) -> None:
    result = run_cli("small", "-s", reference_server, "--cluster", "local:2")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "small.json").read_text()
    assert result.stderr == ""


def test_mock_with_a_local_cluster(tmp_path: Path) -> None:
    result = run_cli("demo", "--mock", "--cluster", "local:1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "demo.json").read_text()


def test_faults_on_give_exact_counts(faulty_server: str, scheduler: str) -> None:
    args = ["medium", "-s", faulty_server, "--cluster", scheduler, "--retries", "10"]
    code, out, err = invoke(*args, "--backoff", "0.01", "-t", "--report", os.devnull)
    assert code == 0, err
    assert out == expected_json("medium", MEDIUM) + "\n"
    assert retries_in(err.splitlines()[-1]) > 0, "the faults should have forced retries"


def test_retries_exhausted_is_one_error_line_naming_the_download(
    threads_cluster: LocalCluster, scheduler: str
) -> None:
    with running_server(catalog=TINY, workers=1, faults=FaultConfig(fail_rate=1.0)) as url:
        code, out, err = invoke("tiny", "-s", url, "--cluster", scheduler, "--retries", "1", "-q")
        wait_until_idle(threads_cluster)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    ids = [str(download.id) for download in TINY.downloads("tiny") or ()]
    assert any(lines[0].startswith(f"error: Download {download}: ") for download in ids), err
    assert "(after 2 attempts)" in lines[0]


def test_stats_on_a_cluster_are_those_of_a_local_run(server: str, scheduler: str) -> None:
    local = invoke("tiny", "-s", server, "--stats", "--normal-range", "spo2=90:100")
    code, out, err = invoke(
        "tiny", "-s", server, "--stats", "--normal-range", "spo2=90:100", "--cluster", scheduler
    )
    assert local[0] == 0, local[2]
    assert code == 0, err
    assert out == local[1]
    assert json.loads(out)["totals"]["spo2"]["count"] > 0


def test_an_address_that_does_not_answer_is_one_error_line(server: str) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    code, out, err = invoke("tiny", "-s", server, "--cluster", address, "--timeout", "1")
    assert time.monotonic() - started < 30
    assert code == 1
    assert out == ""
    assert err.startswith(f"error: Cannot reach the Dask scheduler at {address} (")
    assert len(err.splitlines()) == 1


def test_a_scheduler_without_workers_is_one_error_line(server: str) -> None:
    settings = {**local_cluster_settings(0, processes=False)}
    with distributed.LocalCluster(**settings) as empty:
        code, out, err = invoke(
            "tiny", "-s", server, "--cluster", empty.scheduler_address, "--timeout", "1"
        )
    assert code == 1
    assert out == ""
    assert err.startswith(f"error: The Dask scheduler at {empty.scheduler_address} has no workers")
    assert len(err.splitlines()) == 1


def test_mock_with_a_remote_cluster_is_a_usage_error() -> None:
    code, out, err = invoke("demo", "--mock", "--cluster", "tcp://10.1.2.3:8786")
    assert code == 2
    assert out == ""
    assert err.startswith("error: --mock's server is on this machine's loopback")


def test_a_loopback_server_with_a_remote_cluster_is_a_usage_error() -> None:
    code, out, err = invoke(
        "demo", "-s", "http://localhost:8000", "--cluster", "tcp://10.1.2.3:8786"
    )
    assert code == 2
    assert out == ""
    assert err.startswith("error: The server at http://localhost:8000 is on this machine's")


@pytest.mark.parametrize(
    ("server", "address", "reaches"),
    [
        ("http://127.0.0.1:8000", "local:2", True),
        ("http://127.0.0.1:8000", "tcp://127.0.0.1:8786", True),
        ("http://localhost:8000", "localhost:8786", True),
        ("http://[::1]:8000", "tls://[::1]:8786", True),
        ("http://exports.internal:8000", "tcp://10.1.2.3:8786", True),
        ("http://127.0.0.2:8000", "tcp://10.1.2.3:8786", False),
        ("http://localhost:8000", "scheduler:8786", False),
        ("http://[::1]:8000", "tcp://[2001:db8::1]:8786", False),
    ],
)
def test_workers_elsewhere_cannot_reach_a_loopback_server(
    server: str, address: str, reaches: bool
) -> None:
    assert ClusterAddress.parse(address).reaches(server) is reaches


@pytest.mark.parametrize("address", ["local:0", "local:x", "", "tcp://a b"])
def test_an_address_it_cannot_use_is_a_usage_error(address: str) -> None:
    code, out, err = invoke("demo", "--cluster", address)
    assert code == 2
    assert out == ""
    assert err.startswith("error: Invalid value for '--cluster'")


def test_without_the_extra_cluster_says_how_to_install_it() -> None:
    # distributed and dask made unimportable, as in an install without the extra.
    code = (
        "import sys; sys.modules['distributed'] = sys.modules['dask'] = None; "
        "sys.argv = ['cli', 'demo', '--cluster', 'local:2']; "
        "from export_client.__main__ import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "uv sync --extra dask" in result.stderr
    assert "pip install 'export-counter[dask]'" in result.stderr


def test_a_worker_killed_mid_run_changes_no_count(reference_server: str) -> None:
    port = int(reference_server.rsplit(":", 1)[1])
    # Slow enough (about 4 s a download) to kill a worker in the middle of one.
    process = subprocess.Popen(
        [
            *CLI,
            "demo",
            "-s",
            reference_server,
            "--cluster",
            "local:2",
            "--limit-rate",
            "100K",
            "-t",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    workers: list[int] = []
    try:

        def downloading() -> list[int]:
            workers[:] = [
                pid for pid in children(process.pid) if "spawn_main" in " ".join(command_line(pid))
            ]
            return [pid for pid in workers if _connected_to(pid, port)]

        victim = wait_for(downloading, timeout=60)[0]
        time.sleep(0.5)  # for its first progress event to reach the client
        os.kill(victim, signal.SIGKILL)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
        kill_leftovers(workers)
    assert process.returncode == 0, err
    assert out == (ROOT / "demo.json").read_text()
    assert "the worker running it was lost; Dask runs it again" in err


def _connected_to(pid: int, port: int) -> bool:
    try:
        connections = psutil.Process(pid).net_connections("tcp")
    except psutil.Error:
        return False
    return any(c.raddr and c.raddr.port == port for c in connections)


def test_cluster_addresses() -> None:
    assert ClusterAddress.parse("local:3") == ClusterAddress(None, 3)
    assert ClusterAddress.parse("local").workers >= 1
    assert ClusterAddress.parse("tcp://10.1.2.3:8786").scheduler == "tcp://10.1.2.3:8786"
    assert not ClusterAddress.parse("scheduler:8786").local


class Recorder(NoProgress):
    """A progress listener that keeps the sums a display would show."""

    def __init__(self) -> None:
        self.rows = self.nbytes = self.begun = self.done = 0
        self.retries: list[Retry] = []

    def download_started(self, download_id: str) -> None:
        self.begun += 1

    def received(self, download_id: str, nbytes: int) -> None:
        self.nbytes += nbytes

    def counted(self, download_id: str, rows: int) -> None:
        self.rows += rows

    def retrying(self, retry: Retry) -> None:
        self.retries.append(retry)
        self.rows -= retry.rows
        self.nbytes -= retry.nbytes

    def download_finished(self, download_id: str) -> None:
        self.done += 1


def _result(rows: int, nbytes: int) -> DownloadResult:
    return DownloadResult("a", {}, rows, 0, (), nbytes, 1)


def test_progress_crosses_the_cluster_as_a_local_run_shows_it() -> None:
    messages: list[dict[str, object]] = []
    first = WorkerProgress(messages.append, "a")
    first.download_started("a")
    first.received("a", 500)
    first.counted("a", 50)  # events go at most every EVENT_SECONDS, and with each retry
    first.retrying(Retry("download a", "broke", 0.1, "a", 50, 500))
    first.received("a", 300)
    first.finished()
    again = WorkerProgress(messages.append, "a")  # the task again, on another worker
    again.download_started("a")
    again.received("a", 700)
    again.counted("a", 70)
    again.finished()
    listener = Recorder()
    shown = ClusterProgress(listener)
    for message in messages:
        shown.event((0.0, message))
    assert listener.begun == 1
    assert [retry.reason for retry in listener.retries] == [
        "broke",
        "the worker running it was lost; Dask runs it again",
    ]
    assert (listener.rows, listener.nbytes) == (70, 700)
    shown.finished(_result(100, 1000))  # the result corrects what events were late to tell
    assert (listener.rows, listener.nbytes, listener.done) == (100, 1000, 1)
    again.counted("a", 30)
    shown.event((0.0, messages[-1]))  # events after the result are dropped
    assert (listener.rows, listener.nbytes, listener.begun) == (100, 1000, 1)


def test_ctrl_c_at_a_terminal_stops_the_run_and_its_workers_quietly(
    reference_server: str,
) -> None:
    # A terminal's Ctrl-C is SIGINT to every process of the foreground group, workers included.
    args = ["demo", "-s", reference_server, "--cluster", "local:1", "--limit-rate", "50K", "-q"]
    process = subprocess.Popen(
        [*CLI, *args], stderr=subprocess.PIPE, text=True, cwd=ROOT, process_group=0
    )
    workers: list[int] = []
    try:
        workers += wait_for(
            lambda: [p for p in children(process.pid) if "spawn_main" in " ".join(command_line(p))]
        )
        time.sleep(3)  # well into the run: a download takes about 8 s
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
        kill_leftovers(workers)
    assert process.returncode == 130, err
    assert err == "error: interrupted\n"
    assert still_running(workers, timeout=10) == []


@pytest.fixture(scope="module")
def medium_server() -> Iterator[str]:
    with running_server(catalog=MEDIUM, workers=2) as url:
        yield url


def test_progress_on_a_terminal_is_live_from_the_workers(medium_server: str) -> None:
    args = ["medium", "-s", medium_server, "--cluster", "local:1", "--limit-rate", "1M"]
    code, out, raw = on_a_terminal(args, 120)
    assert code == 0
    assert out == expected_json("medium", MEDIUM) + "\n"
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw).replace("\r", "\n")
    # Before the first result reaches the client, what it shows came from the worker's events:
    # the download in flight, and the bytes read so far (its rows come in blocks, near the end).
    before_any_result = re.findall(r"rows ([0-9,]+) MB .* 0/3 done, 1 in flight", frames)
    assert before_any_result, frames
    assert max(int(megabytes.replace(",", "")) for megabytes in before_any_result) > 0, frames
