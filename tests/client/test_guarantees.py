"""What the client guarantees against a broken or hostile server, through the real CLI.

Each test puts a small misbehaving server (`hostile.py`) in front of the client. Every case
must end in the exact result (after a retry) or in one `error:` line and a non-zero exit: never
wrong JSON, never a hang. Cases that used to hang run the CLI in a subprocess with a timeout.
"""

from __future__ import annotations

import json as jsonlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import pytest
from typer.testing import CliRunner

from export_client._cli import app
from export_client._defaults import MAX_JSON_BYTES

from . import hostile
from .hostile import HEADER, api, body, hostile_server, metadata, rows

runner = CliRunner()
# Quick retries, so that every case below takes well under a second of waiting.
FAST = ["--backoff", "0.01"]


def invoke(url: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["demo", "-s", url, *FAST, *args])
    return result.exit_code, result.stdout, result.stderr


def run_cli(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own: a regression that hangs fails instead of hanging."""
    return subprocess.run(
        [sys.executable, "-m", "export_client", "demo", "-s", url, *FAST, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def expected(data: bytes) -> str:
    """The JSON the client must print for one download whose body is `data`."""
    patients: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for line in data.decode().splitlines()[1:]:
        fields = line.split(",")
        if len(fields) != 4 or not fields[0] or not fields[2]:
            continue
        types = patients.setdefault(fields[0], {})
        types[fields[2]] = types.get(fields[2], 0) + 1
        totals[fields[2]] = totals.get(fields[2], 0) + 1
    return jsonlib.dumps({"patients": patients, "totals": totals}, indent=2, sort_keys=True) + "\n"


def one_line_error(err: str) -> str:
    """The one `error:` line of stderr, which may hold retry notices before it, nothing else."""
    *retries, last = err.strip().splitlines()
    assert all(line.startswith("retrying ") for line in retries), err
    assert last.startswith("error: "), err
    assert "Traceback" not in err
    return last


WHOLE = HEADER + rows(40)
# Cut inside the last row's timestamp: the row has too few fields.
CUT_IN_LAST_ROW = WHOLE[: WHOLE.rindex(b"\n", 0, len(WHOLE) - 1) + 12]


# 1. A body cut inside its last row, framed cleanly


@pytest.mark.parametrize("framing", ["length", "close", "chunked"])
def test_a_cleanly_framed_body_cut_inside_its_last_row_is_retried(framing: str) -> None:
    attempts = [body(CUT_IN_LAST_ROW, framing=framing), body(WHOLE, framing=framing)]
    with hostile_server(api({"d1": (40, attempts)})) as server:
        code, out, err = invoke(server.url, "-q", "-t")
    assert code == 0, err
    assert out == expected(WHOLE)
    assert "1 retries" in err


@pytest.mark.parametrize("framing", ["length", "close", "chunked"])
def test_a_body_always_cut_inside_its_last_row_fails(framing: str) -> None:
    with hostile_server(api({"d1": (40, body(CUT_IN_LAST_ROW, framing=framing))})) as server:
        code, out, err = invoke(server.url, "-q", "--retries", "1")
    assert code == 1
    assert out == ""
    line = one_line_error(err)
    assert "d1" in line
    assert "ended inside a row" in line


def test_a_complete_last_row_without_its_line_end_is_counted() -> None:
    data = WHOLE.rstrip(b"\n")
    with hostile_server(api({"d1": (40, body(data, framing="length"))})) as server:
        code, out, err = invoke(server.url)
    assert code == 0, err
    assert out == expected(WHOLE)


# 2. Malformed rows are never silent


def test_malformed_rows_are_reported_even_when_quiet() -> None:
    bad = HEADER + rows(10) + b"P001,t,bp_sys\n,t,bp_dia,1\n" + rows(10, start=10)
    good = HEADER + rows(5)
    with hostile_server(api({"d1": (22, body(bad)), "d2": (5, body(good))})) as server:
        code, out, err = invoke(server.url, "-q")
    assert code == 0, err
    assert out == expected(bad + rows(5))
    assert err == "warning: 2 malformed rows were not counted: 2 in download d1\n"


# 3. A body that never ends


def test_an_endless_body_stops_as_soon_as_it_is_too_long() -> None:
    attempts = [hostile.endless(HEADER, rows(100)), body(HEADER + rows(100))]
    with hostile_server(api({"d1": (100, attempts)})) as server:
        result = run_cli(server.url, "-t", timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected(HEADER + rows(100))
    assert "1 retries" in result.stderr


def test_an_always_endless_body_fails_naming_the_download() -> None:
    with hostile_server(api({"d1": (100, hostile.endless(HEADER, rows(100)))})) as server:
        result = run_cli(server.url, "--retries", "1", timeout=30)
    assert result.returncode == 1
    assert result.stdout == ""
    line = one_line_error(result.stderr)
    assert "d1" in line
    assert "more than the 100 rows" in line


def test_endless_blank_lines_stop_too() -> None:
    with hostile_server(api({"d1": (100, hostile.endless(HEADER, b"\n"))})) as server:
        result = run_cli(server.url, "--retries", "0", timeout=30)
    assert result.returncode == 1
    assert "more than 1,000 blank lines" in one_line_error(result.stderr)


# 4. A body that drips


def test_a_dripping_body_is_abandoned_and_retried() -> None:
    data = HEADER + rows(40)
    attempts = [hostile.drip(data, interval=0.2, prefix=100), body(data)]
    with hostile_server(api({"d1": (40, attempts)})) as server:
        result = run_cli(server.url, "--speed-limit", "1000", "--speed-time", "1", "-t")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected(data)
    assert "1 retries" in result.stderr


def test_a_body_that_always_drips_fails_naming_the_download() -> None:
    data = HEADER + rows(40)
    with hostile_server(api({"d1": (40, hostile.drip(data, interval=0.2))})) as server:
        result = run_cli(
            server.url, "--speed-limit", "1000", "--speed-time", "0.5", "--retries", "1"
        )
    assert result.returncode == 1
    line = one_line_error(result.stderr)
    assert "d1" in line
    assert "too slow" in line


def test_the_speed_floor_defaults_are_documented_in_the_help() -> None:
    result = runner.invoke(app, ["--help"], terminal_width=200)
    assert "--speed-limit" in result.stdout
    assert "1024" in result.stdout
    assert "--speed-time" in result.stdout


# 5. Blank lines are cheap


def test_a_gigabyte_of_blank_lines_is_rejected_in_seconds() -> None:
    # 1 GiB of newlines, gzip-compressed to about 1 MB: the old client spent minutes on it.
    data = [HEADER, *[b"\n" * (1 << 20)] * 1024]
    with hostile_server(api({"d1": (10, hostile.gzipped(data))})) as server:
        started = time.monotonic()
        result = run_cli(server.url, "--retries", "0", timeout=60)
    assert result.returncode == 1
    assert "blank lines" in one_line_error(result.stderr)
    assert time.monotonic() - started < 20


# 6. JSON bodies have a size limit


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_oversized_metadata_is_refused(framing: str) -> None:
    huge = metadata("d1", 10)
    huge["patients"] = [f"P{i:07d}" for i in range(MAX_JSON_BYTES // 8)]
    routes = api({"d1": (10, body(HEADER + rows(10)))})
    routes["/api/export/demo/d1"] = hostile.body(
        jsonlib.dumps({"data": huge}).encode(), framing=framing, content_type="application/json"
    )
    with hostile_server(routes) as server:
        code, out, err = invoke(server.url)
    assert code == 1
    assert out == ""
    assert f"more than {MAX_JSON_BYTES:,} bytes of JSON" in one_line_error(err)


# 7. Requests never leave the API


@pytest.mark.parametrize("bad_id", ["..", ".", ""])
def test_a_download_id_that_is_no_path_segment_is_refused(bad_id: str) -> None:
    routes = api({"d1": (10, body(HEADER + rows(10)))})
    routes["/api/export/demo"] = hostile.json(
        {"data": {"id": "demo", "download_ids": ["d1", bad_id]}}
    )
    with hostile_server(routes) as server:
        code, out, err = invoke(server.url)
    assert code == 1
    assert out == ""
    assert repr(bad_id) in one_line_error(err)
    assert all(path.startswith("/api/export") for path in server.requests)
    assert server.requests == ["/api/export", "/api/export/demo"]


@pytest.mark.parametrize("bad_id", ["..", "."])
def test_an_export_id_that_is_no_path_segment_is_refused(bad_id: str) -> None:
    routes = api({"d1": (10, body(HEADER + rows(10)))}, export_ids=["demo", bad_id])
    with hostile_server(routes) as server:
        result = runner.invoke(app, [bad_id, "-s", server.url, *FAST])
    assert result.exit_code == 1
    assert repr(bad_id) in one_line_error(result.stderr)
    assert server.requests == ["/api/export"]


# 8. Redirects are not followed


def test_a_redirect_to_another_server_is_not_followed() -> None:
    with hostile_server(api({"d1": (10, body(HEADER + rows(10)))})) as elsewhere:
        location = f"{elsewhere.url}/api/export/demo/d1/data"
        routes = api({"d1": (10, hostile.redirect(location))})
        with hostile_server(routes) as server:
            code, out, err = invoke(server.url)
    assert code == 1
    assert out == ""
    line = one_line_error(err)
    assert "301" in line
    assert location in line
    assert elsewhere.requests == []


def test_a_redirect_during_discovery_is_not_followed() -> None:
    routes: dict[str, hostile.Handler | Sequence[hostile.Handler]] = {
        "/api/export": hostile.redirect("http://127.0.0.1:9/api/export", status=302)
    }
    with hostile_server(routes) as server:
        code, _, err = invoke(server.url)
    assert code == 1
    assert "redirect to 'http://127.0.0.1:9/api/export'" in one_line_error(err)


# 9 and 10. Discovery retries as downloads do, and -t counts those retries


def test_discovery_survives_a_server_that_is_not_up_yet() -> None:
    with hostile_server({}) as server:
        url = server.url
    # The port is free again: nothing listens there until the server below starts.
    process = subprocess.Popen(
        [sys.executable, "-m", "export_client", "demo", "-s", url, "--backoff", "0.5", "-t"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    first = process.stderr.readline()  # the first refusal, retried
    assert first.startswith("retrying the export list in "), first
    assert "Cannot connect" in first
    port = int(url.rsplit(":", 1)[1])
    with hostile_server(api({"d1": (10, body(HEADER + rows(10)))}), port=port):
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out == expected(HEADER + rows(10))
    assert " 0 retries" not in err, err


def test_time_summary_counts_discovery_retries() -> None:
    routes = api({"d1": (10, body(HEADER + rows(10)))})
    unavailable = hostile.json({"detail": "busy"}, status=503)
    routes["/api/export"] = [unavailable, unavailable, routes["/api/export"]]  # type: ignore[list-item]
    with hostile_server(routes) as server:
        code, _, err = invoke(server.url, "-t")
    assert code == 0, err
    assert ", 2 retries," in err


def test_an_unreachable_server_is_reported_after_the_retries() -> None:
    with hostile_server({}) as server:
        url = server.url
    code, out, err = invoke(url, "--retries", "2")
    assert code == 1
    assert out == ""
    line = one_line_error(err)
    assert "Cannot reach the export server" in line
    assert "3 attempts" in line


# 11. Row counts are JSON integers


@pytest.mark.parametrize("announced", [100.9, "100", True, None, -1])
def test_row_counts_must_be_json_integers(announced: object) -> None:
    routes = api({"d1": (10, body(HEADER + rows(10)))})
    routes["/api/export/demo/d1"] = hostile.json({"data": metadata("d1", announced)})
    with hostile_server(routes) as server:
        code, out, err = invoke(server.url)
    assert code == 1
    assert out == ""
    assert "'rows'" in one_line_error(err) or "negative" in err


# 12. CR-only line ends


def test_cr_only_line_ends_are_named() -> None:
    data = (HEADER + rows(10)).replace(b"\n", b"\r")
    with hostile_server(api({"d1": (10, body(data))})) as server:
        code, _, err = invoke(server.url)
    assert code == 1
    line = one_line_error(err)
    assert "bare carriage return" in line
    assert "header" not in line


# 13 and 14. Ctrl-C during start-up, and SIGTERM


# From about 20 ms in (the interpreter's own start-up is out of reach), through the imports
# and typer's parsing, into the run.
@pytest.mark.parametrize("delay", [0.1, 0.2, 0.3, 0.4, 0.5, 0.7])
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(delay: float) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "export_client", "demo", "-s", "http://127.0.0.1:9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert out == ""
    if process.returncode == -signal.SIGINT:
        # Killed before the interpreter had even installed its handler (a loaded machine
        # can take that long to start a process): silent, and a shell reports 130 too.
        assert err == ""
        return
    assert process.returncode == 130, err
    assert one_line_error(err) == "error: interrupted"


@pytest.mark.parametrize("delay", [0.1, 0.3, 0.5, 1.5])
def test_sigterm_stops_the_run_with_exit_143(delay: float) -> None:
    data = HEADER + rows(40)
    with hostile_server(api({"d1": (40, hostile.drip(data, interval=0.5))})) as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "export_client", "demo", "-s", server.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 143, err
    assert out == ""
    assert one_line_error(err) == "error: terminated"
