import socket
import urllib.error
import urllib.request

import pytest

from export_server import Catalog, PortInUseError, create_app, running_server


def test_running_server_yields_a_loopback_url_and_stops(catalog: Catalog) -> None:
    app = create_app(catalog, workers=1)
    with running_server(app) as url:
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


def test_running_server_takes_an_app_or_options_not_both(catalog: Catalog) -> None:
    with (
        pytest.raises(TypeError, match="not both"),
        running_server(create_app(catalog, workers=1), workers=1),
    ):
        pass
