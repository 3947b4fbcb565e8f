import contextlib
import http.client
import importlib.metadata
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from export_server import REFERENCE_CATALOG, start_server_process
from export_server._cli import app

from ..processes import children, still_running
from .sockets import listen_backlogs, somaxconn

LISTENING = re.compile(r"^export server listening on (http://127\.0\.0\.1:(\d+))\n$")


@contextmanager
def server_process(
    *args: str, new_session: bool = False, pass_fds: tuple[int, ...] = ()
) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "export_server", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
        pass_fds=pass_fds,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


def read_line(process: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert process.stderr is not None
    ready, _, _ = select.select([process.stderr], [], [], timeout)
    assert ready, "the server printed nothing"
    return process.stderr.readline()


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serves_then_stops_cleanly_on_signal(tmp_path: Path, signum: signal.Signals) -> None:
    with server_process("--port", "0", "--workers", "1", "--cache-dir", str(tmp_path)) as process:
        match = LISTENING.match(read_line(process))
        assert match, "unexpected first line"
        base = match.group(1)
        assert get_json(f"{base}/api/export") == {
            "data": {"export_ids": ["demo", "small", "large"]}
        }
        # Leave a stream unfinished at the signal: its cache file must not survive.
        small = get_json(f"{base}/api/export/small")
        assert isinstance(small, dict)
        download_id = small["data"]["download_ids"][0]
        workers = _children_of(process.pid)
        assert len(workers) == 1
        with urllib.request.urlopen(f"{base}/api/export/small/{download_id}/data") as response:
            response.read(10_000)
            assert any(tmp_path.iterdir())
            process.send_signal(signum)
            assert process.wait(timeout=20) == 0
        assert process.stderr is not None
        rest = process.stderr.read()
    assert "Traceback" not in rest
    assert list(tmp_path.iterdir()) == []
    # The workers went with the server (and were reaped by it).
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists()] == []


@pytest.mark.parametrize("ctrl_c", [False, True], ids=["sigterm", "ctrl-c-to-the-group"])
def test_a_signal_while_clients_are_reading_stops_quietly(tmp_path: Path, ctrl_c: bool) -> None:
    # One worker for both streams: it is then sending at the stop, the case that used to fail.
    args = ("--port", "0", "--workers", "1", "--cache-dir", str(tmp_path))
    # In a session of its own, so that a signal to its process group is like a Ctrl-C at the
    # terminal it would run in, and does not reach pytest.
    with server_process(*args, new_session=True) as process:
        match = LISTENING.match(read_line(process))
        assert match, "unexpected first line"
        base = match.group(1)
        received = [0, 0]

        def read(slot: int, download_id: str) -> None:
            url = f"{base}/api/export/small/{download_id}/data"
            try:
                with urllib.request.urlopen(url, timeout=20) as response:
                    while chunk := response.read(1 << 16):
                        received[slot] += len(chunk)
            except (http.client.IncompleteRead, OSError):
                pass  # the server stopped mid-body, as it should

        # The two longest of `small` (about 1M rows each): generating either takes longer than
        # the grace period the server gives unfinished streams at a stop.
        longest = sorted(REFERENCE_CATALOG.downloads("small") or [], key=lambda d: -d.rows)[:2]
        readers = [
            threading.Thread(target=read, args=(slot, str(download.id)))
            for slot, download in enumerate(longest)
        ]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 20
        while min(received) < 1 << 18 and time.monotonic() < deadline:
            time.sleep(0.01)
        # Both workers are sending as fast as the clients read when the signal comes.
        assert min(received) >= 1 << 18
        if ctrl_c:
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        for reader in readers:
            reader.join(timeout=20)
        assert process.stderr is not None
        rest = process.stderr.read()
    assert "Traceback" not in rest, rest
    assert rest == ""
    # A stream that the stop cut leaves no temporary file (one that finished in the grace
    # period would leave a whole body).
    assert [path.name for path in tmp_path.iterdir() if path.suffix == ".tmp"] == []


def test_a_ctrl_c_while_the_workers_start_stops_quietly() -> None:
    with server_process("--port", "0", "--workers", "2", new_session=True) as process:
        deadline = time.monotonic() + 20
        while not _children_of(process.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        # The workers are importing now: a Ctrl-C at the terminal must not reach them.
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=20) == 0
        assert process.stderr is not None
        output = process.stderr.read()
    assert "Traceback" not in output, output
    assert "KeyboardInterrupt" not in output, output


@pytest.mark.parametrize(("args", "backlog"), [((), 1024), (("--backlog", "300"), 300)])
def test_the_listen_backlog(args: tuple[str, ...], backlog: int) -> None:
    with server_process("--port", "0", "--workers", "1", *args) as process:
        match = LISTENING.match(read_line(process))
        assert match, "unexpected first line"
        assert listen_backlogs(int(match.group(2))) == [min(backlog, somaxconn())]


def test_an_address_of_another_machine_is_one_clear_line() -> None:
    # 192.0.2.1 is TEST-NET-1: never an address of this machine.
    with server_process("--host", "192.0.2.1", "--port", "0", "--workers", "1") as process:
        assert process.wait(timeout=20) == 1
        assert process.stderr is not None
        output = process.stderr.read()
    assert output == (
        "error: Cannot listen on 192.0.2.1:0: the address is not one of this machine's.\n"
    )


def test_a_cache_dir_that_cannot_be_created_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ("--port", "0", "--workers", "1", "--cache-dir", str(blocker / "cache"))
    with server_process(*args) as process:
        assert process.wait(timeout=20) == 1
        assert process.stderr is not None
        output = process.stderr.read()
    assert output == (
        f"error: Cannot use the cache directory {blocker / 'cache'}: not a directory.\n"
    )


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True, check=True)
    return [
        int(child)
        for child, parent in (line.split() for line in out.stdout.splitlines()[1:])
        if parent == str(pid)
    ]


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with server_process("--port", str(port), "--workers", "1") as process:
            assert process.wait(timeout=20) == 1
            assert process.stderr is not None
            output = process.stderr.read()
    assert output == f"error: Cannot listen on 127.0.0.1:{port}: the address is already in use.\n"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_documents_every_option_and_shows_flags_bare(flag: str) -> None:
    result = invoke(flag)
    assert result.exit_code == 0, result.output
    for option in (
        "--host",
        "--port",
        "--fd",
        "--control-fd",
        "--backlog",
        "--workers",
        "--cache-dir",
        "--fail-rate",
        "--error-rate",
        "--latency",
        "--write-timeout",
        "--chaos-seed",
        "--retry-after",
        "--verbose",
        "--version",
        "--help",
    ):
        [line] = [
            line for line in result.output.splitlines() if line.lstrip("│ ").startswith(option)
        ]
        assert re.search(r"\b[A-Z][a-z]+\b.* \w+", line.split(option, 1)[1]), line
    # A flag is its names and its help: no type, no negative form.
    assert "<bool>" not in result.output
    assert "--no-" not in result.output
    for flag_line in ("--verbose        -d  ", "--version        -v  ", "--help           -h  "):
        assert flag_line in result.output


@pytest.mark.parametrize("flag", ["--version", "-v"])
def test_version(flag: str) -> None:
    result = invoke(flag)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"server {importlib.metadata.version('export-counter')}\n"
    assert result.stderr == ""


def test_verbose_is_d_and_logs_every_request() -> None:
    lines: list[str] = []
    with start_server_process(workers=1, args=["-d"], echo=lines.append) as server:
        assert get_json(f"{server.url}/api/export") == {
            "data": {"export_ids": ["demo", "small", "large"]}
        }
    assert any('"GET /api/export HTTP/1.1" 200' in line for line in lines), lines


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--fail-rate", "2"], "Invalid value for '--fail-rate': must be between 0 and 1."),
        (["--fail-rate", "nan"], "Invalid value for '--fail-rate': must be between 0 and 1."),
        (["--error-rate", "-0.1"], "Invalid value for '--error-rate': must be between 0 and 1."),
        (
            ["--workers", "0"],
            "Invalid value for '--workers': ",
        ),
        (
            ["--workers", "100000"],
            "Invalid value for '--workers': ",
        ),
        (
            ["--port", "99999"],
            "Invalid value for '--port': ",
        ),
        (
            ["--backlog", "0"],
            "Invalid value for '--backlog': ",
        ),
        (
            ["--backlog", str(2**31)],
            "Invalid value for '--backlog': must be at most 2147483647: the kernel takes a C int.",
        ),
        (
            ["--fd", str(2**64)],
            "Invalid value for '--fd': must be at most 2147483647: file descriptors are C ints.",
        ),
        (
            ["--control-fd", str(2**31)],
            "Invalid value for '--control-fd': must be at most 2147483647: file descriptors are"
            " C ints.",
        ),
        *(
            (
                ["--latency", value],
                "Invalid value for '--latency': must be a finite number of seconds, 0 or more.",
            )
            for value in ("-1", "inf", "nan", "1e999")
        ),
        *(
            (
                ["--write-timeout", value],
                "Invalid value for '--write-timeout': must be a finite number of seconds above 0.",
            )
            for value in ("0", "-1", "inf", "nan")
        ),
        (
            ["--retry-after", str(10**20)],
            "Invalid value for '--retry-after': must be at most 2147483648: HTTP reads any larger"
            " number as that.",
        ),
        (["--port", "eighty"], "Invalid value for '--port': "),
        (["--no-such-option"], "No such option: --no-such-option"),
        (["serve"], "Got unexpected extra argument(s) (serve)"),
    ],
)
def test_a_usage_error_is_one_line(args: list[str], error: str) -> None:
    # Where typer words the error (a range, a number), only its start is ours to check.
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {error}")
    assert line.endswith(" (see server --help)")
    if not error.endswith(": "):
        assert line == f"error: {error} (see server --help)"


@pytest.mark.parametrize(
    "args", [["--port", "99999"], ["--fail-rate", "2"], ["--latency", "inf"], ["--nope"]]
)
def test_the_commands_usage_errors_are_one_line_on_stderr(args: list[str]) -> None:
    with server_process(*args) as process:
        assert process.wait(timeout=20) == 2
        assert process.stderr is not None
        output = process.stderr.read()
    [line] = output.splitlines()
    assert line.startswith("error: ")
    assert line.endswith(" (see server --help)")


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_serves_on_an_inherited_listening_socket() -> None:
    with _listening_socket() as sock:
        port = sock.getsockname()[1]
        args = ("--fd", str(sock.fileno()), "--workers", "1", "--backlog", "300")
        with server_process(*args, pass_fds=(sock.fileno(),)) as process:
            sock.close()  # the server's copy is the only one now
            match = LISTENING.match(read_line(process))
            assert match, "unexpected first line"
            assert int(match.group(2)) == port
            assert get_json(f"http://127.0.0.1:{port}/api/export") == {
                "data": {"export_ids": ["demo", "small", "large"]}
            }
            # It listens again with its own backlog.
            assert listen_backlogs(port) == [min(300, somaxconn())]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0


@pytest.mark.parametrize("other", [["--port", "8000"], ["--host", "127.0.0.1"], ["--port", "0"]])
def test_an_inherited_socket_and_an_address_are_a_usage_error(other: list[str]) -> None:
    result = invoke("--fd", "3", *other)
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: Invalid value for '--fd': cannot be combined with {other[0]}."
        " (see server --help)\n"
    )


@pytest.mark.parametrize("kind", ["not listening", "not a socket", "not open", "UDP"])
def test_an_fd_that_is_no_listening_socket_is_one_clear_line(kind: str) -> None:
    reasons = {
        "not listening": "it is not listening",
        "not a socket": "it is not a socket",
        "not open": "it is not open",
        "UDP": "it is not a TCP socket",
    }
    with contextlib.ExitStack() as stack:
        if kind == "not a socket":
            fd = stack.enter_context(open(os.devnull, "rb")).fileno()
        elif kind == "not open":
            fd = 1000
        else:
            sock = stack.enter_context(
                socket.socket(type=socket.SOCK_DGRAM if kind == "UDP" else socket.SOCK_STREAM)
            )
            sock.bind(("127.0.0.1", 0))
            fd = sock.fileno()
        passed = () if kind == "not open" else (fd,)
        with server_process("--fd", str(fd), "--workers", "1", pass_fds=passed) as process:
            assert process.wait(timeout=20) == 1
            assert process.stderr is not None
            output = process.stderr.read()
    assert (
        output
        == f"error: Cannot use file descriptor {fd} as the listening socket: {reasons[kind]}.\n"
    )


def test_the_control_socket_gets_ready_and_its_end_stops_the_server() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        args = ("--port", "0", "--workers", "2", "--control-fd", str(theirs.fileno()))
        with server_process(*args, pass_fds=(theirs.fileno(),)) as process:
            theirs.close()
            ours.settimeout(20)
            ready = ours.recv(4096)
            match = LISTENING.match(read_line(process))
            assert match, "unexpected first line"
            assert ready == f"ready {match.group(1)}\n".encode()
            assert get_json(f"{match.group(1)}/api/export") == {
                "data": {"export_ids": ["demo", "small", "large"]}
            }
            workers = children(process.pid)
            assert len(workers) == 2
            # What the kernel does when the parent dies, however it dies.
            ours.close()
            assert process.wait(timeout=10) == 0
            assert process.stderr is not None
            rest = process.stderr.read()
    assert rest == ""
    assert still_running(workers, timeout=5) == []


def test_the_end_of_the_control_socket_during_start_up_stops_the_server() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        args = ("--port", "0", "--workers", "1", "--control-fd", str(theirs.fileno()))
        with server_process(*args, pass_fds=(theirs.fileno(),)) as process:
            theirs.close()
            ours.close()
            assert process.wait(timeout=20) == 0
            assert process.stderr is not None
            output = process.stderr.read()
    assert "Traceback" not in output, output


def test_a_control_fd_that_is_not_a_socket_is_one_clear_line() -> None:
    with open(os.devnull, "rb") as file:
        fd = file.fileno()
        args = ("--port", "0", "--workers", "1", "--control-fd", str(fd))
        with server_process(*args, pass_fds=(fd,)) as process:
            assert process.wait(timeout=20) == 1
            assert process.stderr is not None
            output = process.stderr.read()
    assert (
        output
        == f"error: Cannot use file descriptor {fd} as the control socket: it is not a socket.\n"
    )
