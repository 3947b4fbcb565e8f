import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from export_server import FaultConfig, ServerStartError, start_server_process

from ..processes import children, kill_leftovers, running, still_running, wait_for


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_server_serves_at_its_url_until_stopped() -> None:
    with start_server_process(workers=2) as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert get(f"{server.url}/api/export") == (
            200,
            b'{"data":{"export_ids":["demo","small","large"]}}',
        )
        workers = children(server.process.pid)
        assert len(workers) == 2
    assert server.process.returncode == 0
    # The line for humans is still there (in full once the server stopped: the drain thread
    # may read it after the parent read `ready`).
    assert server.log == [f"export server listening on {server.url}"]
    assert still_running(workers, timeout=0) == []
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        urllib.request.urlopen(f"{server.url}/api/export", timeout=10)
    assert server.stop() == 0  # stopping twice is harmless


def test_the_options_reach_the_server(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    faults = FaultConfig(error_rate=1.0, retry_after=7)
    with start_server_process(workers=1, cache_dir=cache, faults=faults) as server:
        status, body = get(f"{server.url}/api/export")
        assert status == 503
        assert json.loads(body)["detail"].endswith("(injected fault)")
        assert children(server.process.pid) != []
    assert cache.is_dir()


def test_the_servers_stderr_is_drained_and_echoed() -> None:
    lines: list[str] = []
    # --verbose logs every request: far more than a pipe holds (64 KiB), so a server whose
    # stderr were not read would block.
    with start_server_process(workers=1, args=["--verbose"], echo=lines.append) as server:
        address = urlsplit(server.url)
        assert address.hostname is not None
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=20)
        try:
            for _ in range(1000):
                connection.request("GET", "/api/export/nope")
                assert connection.getresponse().read() == b'{"detail":"Export not found"}'
        finally:
            connection.close()
    logged = [line for line in lines if '"GET /api/export/nope HTTP/1.1" 404' in line]
    assert len(logged) == 1000
    assert f"export server listening on {server.url}" in lines
    assert len(server.log) == 50
    assert server.log == lines[-50:]


def test_a_server_that_cannot_start_gives_the_reason_from_its_stderr(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ServerStartError) as caught:
        start_server_process(workers=1, cache_dir=blocker / "cache")
    message = f"error: Cannot use the cache directory {blocker / 'cache'}: not a directory."
    assert str(caught.value) == (
        f"The export server did not start (it exited with code 1): {message}"
    )
    assert caught.value.log == [message]


def test_bad_arguments_are_the_servers_usage_error() -> None:
    with pytest.raises(ServerStartError) as caught:
        start_server_process(args=["--no-such-option"])
    message = "error: No such option: --no-such-option (see server --help)"
    assert (
        str(caught.value) == f"The export server did not start (it exited with code 2): {message}"
    )
    assert caught.value.log == [message]


def test_a_server_not_ready_in_time_is_stopped() -> None:
    before = _servers_of_this_process()
    with pytest.raises(ServerStartError, match=r"^The export server did not start \(not ready"):
        start_server_process(workers=1, ready_timeout=0.01)
    assert _servers_of_this_process() == before


def _servers_of_this_process() -> list[int]:
    return [pid for pid in children(os.getpid()) if running(pid)]


def test_a_server_goes_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, time
                from export_server import start_server_process
                server = start_server_process(workers=2)
                print(server.process.pid, flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    server_tree: list[int] = []
    try:
        assert parent.stdout is not None
        server = int(parent.stdout.readline())
        server_tree.append(server)
        server_tree += wait_for(lambda: children(server))
        assert len(server_tree) == 3
        # Nothing runs in the parent when SIGKILL ends it: the kernel closing its end of the
        # control socket is what tells the server.
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert still_running(server_tree, timeout=10) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()
        kill_leftovers(server_tree)
