import errno
import inspect
import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from export_server import (
    CacheDirectoryError,
    Catalog,
    InheritedSocketError,
    ListenError,
    PortInUseError,
    _link,
    create_app,
    running_server,
)
from export_server._app import _default_workers
from export_server._server import _listen_error, control_socket, listening_socket

from .sockets import listen_backlogs, somaxconn


def test_running_server_yields_a_loopback_url_and_stops(catalog: Catalog) -> None:
    with running_server(catalog, workers=1) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/api/export", timeout=10) as response:
            assert response.status == 200
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        urllib.request.urlopen(f"{url}/api/export", timeout=10)


def test_running_server_reports_a_taken_port(catalog: Catalog) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(PortInUseError, match=f"127.0.0.1:{port}"),
            running_server(catalog=catalog, workers=1, port=port),
        ):
            pass


def test_running_server_takes_the_options_of_create_app_then_where_to_listen() -> None:
    app_options = list(inspect.signature(create_app).parameters.values())
    options = list(inspect.signature(running_server).parameters.values())
    assert options[: len(app_options)] == app_options
    listen = options[len(app_options) :]
    assert [option.name for option in listen] == ["host", "port", "backlog"]
    assert {option.kind for option in listen} == {inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("192.0.2.1", "the address is not one of this machine's"),
        ("nosuchhost.invalid", "the host cannot be resolved"),
    ],
)
def test_running_server_reports_an_address_it_cannot_listen_on(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch, host: str, reason: str
) -> None:
    started: list[int] = []
    real_start = _link._start_process

    def start_process(fd: int) -> subprocess.Popen[bytes]:
        started.append(fd)
        return real_start(fd)

    monkeypatch.setattr(_link, "_start_process", start_process)
    with (
        pytest.raises(ListenError, match=f"^Cannot listen on {host}:0: {reason}"),
        running_server(catalog=catalog, workers=1, host=host),
    ):
        pass
    # The address is bound before the workers start, so none was started in vain.
    assert started == []


def test_running_server_reports_a_cache_dir_it_cannot_create(
    catalog: Catalog, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with (
        pytest.raises(CacheDirectoryError, match="a-file/cache: not a directory"),
        running_server(catalog=catalog, workers=1, cache_dir=blocker / "cache"),
    ):
        pass


def test_running_server_reports_a_cache_dir_it_may_not_create(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tests may run as root, whom file modes do not stop.
    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with (
        pytest.raises(CacheDirectoryError, match="cache: permission denied"),
        running_server(catalog=catalog, workers=1, cache_dir=tmp_path / "cache"),
    ):
        pass


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (errno.EACCES, "permission denied (ports below 1024 need privileges)"),
        (errno.EADDRNOTAVAIL, "the address is not one of this machine's"),
        (errno.EINVAL, "invalid argument"),
    ],
)
def test_bind_errors_become_listen_errors(error: int, reason: str) -> None:
    exc = _listen_error("127.0.0.1", 80, OSError(error, os.strerror(error)))
    assert type(exc) is ListenError
    assert str(exc) == f"Cannot listen on 127.0.0.1:80: {reason}."
    assert isinstance(_listen_error("::1", 80, OSError(errno.EADDRINUSE, "x")), PortInUseError)


def test_the_default_worker_count_is_the_cpus_this_process_may_use() -> None:
    assert _default_workers() == len(os.sched_getaffinity(0))


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_the_default_listen_backlog_is_1024_or_the_kernels_cap(catalog: Catalog) -> None:
    with running_server(catalog=catalog, workers=1) as url:
        assert listen_backlogs(_port(url)) == [min(1024, somaxconn())]


def test_running_server_takes_a_listen_backlog(catalog: Catalog) -> None:
    with running_server(catalog=catalog, workers=1, backlog=300) as url:
        assert listen_backlogs(_port(url)) == [min(300, somaxconn())]
        with urllib.request.urlopen(f"{url}/api/export", timeout=10) as response:
            assert response.status == 200


@pytest.mark.parametrize("backlog", [0, 2**31])
def test_a_backlog_the_kernel_cannot_take_is_refused(catalog: Catalog, backlog: int) -> None:
    with (
        pytest.raises(ValueError, match=f"backlog must be from 1 to 2147483647, got {backlog}"),
        running_server(catalog=catalog, workers=1, backlog=backlog),
    ):
        pass


@pytest.mark.parametrize("fd", [-1, 2**31, 2**64])
def test_a_file_descriptor_out_of_range_is_not_open(fd: int) -> None:
    with pytest.raises(InheritedSocketError, match=f"^Cannot use file descriptor {fd} as the"):
        listening_socket(fd)
    with pytest.raises(InheritedSocketError, match=r"the control socket: it is not open\.$"):
        control_socket(fd)
