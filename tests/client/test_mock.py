import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from export_client import MockServerError, mock_server

from ..processes import (
    children,
    command_line,
    kill_leftovers,
    running,
    still_running,
    threads,
    wait_for,
)


def _servers(pid: int) -> list[int]:
    return [
        child
        for child in children(pid)
        if "export_server" in command_line(child) and running(child)
    ]


def test_the_mock_server_serves_for_the_block_only() -> None:
    with mock_server() as url:
        with urllib.request.urlopen(f"{url}/api/export", timeout=20) as response:
            assert json.load(response) == {"data": {"export_ids": ["demo", "small", "large"]}}
        [server] = _servers(os.getpid())
        workers = children(server)
    assert still_running([server, *workers], timeout=0) == []


def test_show_log_echoes_the_servers_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with mock_server(show_log=True) as url:
        pass
    assert f"[server] export server listening on {url}\n" in capsys.readouterr().err


def test_a_mock_server_that_is_not_ready_in_time_is_an_error() -> None:
    with (
        pytest.raises(MockServerError, match=r"^The export server did not start \(not ready"),
        mock_server(start_timeout=0.01),
    ):
        pass
    assert _servers(os.getpid()) == []


def test_the_mock_server_goes_when_the_client_is_killed(tmp_path: Path) -> None:
    output = tmp_path / "large.json"
    client = subprocess.Popen(
        [sys.executable, "-m", "export_client", "large", "--mock", "-q", "-o", str(output)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server_tree: list[int] = []
    try:
        [server] = wait_for(lambda: _servers(client.pid))
        server_tree.append(server)
        server_tree += wait_for(lambda: children(server))
        # The client's counting threads start with the first block, so the server is serving
        # by then; large takes minutes, so the client is mid-count when it is killed.
        wait_for(lambda: threads(client.pid)[2:])
        client.send_signal(signal.SIGKILL)
        client.wait()
        assert still_running(server_tree, timeout=10) == []
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        kill_leftovers(server_tree)
    assert not output.exists()
