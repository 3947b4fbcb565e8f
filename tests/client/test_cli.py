"""The real CLI against the real server, started on a free loopback port."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import re
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from export_client._cli import app
from export_client._options import SERVER_ENV
from export_server import Catalog, ExportSpec, FaultConfig, generate_body, running_server

from .hostile import hostile_server
from .stats_reference import ISSUE_RANGES, Number, reference

ROOT = Path(__file__).resolve().parents[2]

TINY = Catalog(
    [
        ExportSpec(
            id="tiny",
            downloads=3,
            min_rows=300,
            max_rows=900,
            event_types=("heart_rate", "spo2"),
            patient_pool=("T001", "T002", "T003", "T004", "T005"),
            first_start=datetime(2025, 8, 26),
            step=timedelta(seconds=3),
        ),
        ExportSpec(
            id="other",
            downloads=2,
            min_rows=10,
            max_rows=20,
            event_types=("bp_sys",),
            patient_pool=("O001", "O002"),
            first_start=datetime(2025, 8, 26),
            step=timedelta(seconds=7),
        ),
    ]
)


# Big enough for several blocks per download, so that worker processes really count.
MEDIUM = Catalog(
    [
        ExportSpec(
            id="medium",
            downloads=3,
            min_rows=20_000,
            max_rows=30_000,
            event_types=("heart_rate", "spo2", "bp_sys"),
            patient_pool=("M001", "M002", "M003", "M004"),
            first_start=datetime(2025, 8, 26),
            step=timedelta(milliseconds=300),
        )
    ]
)


def expected_json(export_id: str, catalog: Catalog = TINY) -> str:
    """The counts, by an oracle independent of the client: csv.reader over the bodies."""
    pairs: Counter[tuple[str, str]] = Counter()
    for download in catalog.downloads(export_id) or ():
        body = b"".join(generate_body(download)).decode()
        for row in csv.DictReader(io.StringIO(body)):
            pairs[row["patient_id"], row["event_type"]] += 1
    patients: dict[str, dict[str, int]] = {}
    totals: Counter[str] = Counter()
    for (patient, event_type), n in pairs.items():
        patients.setdefault(patient, {})[event_type] = n
        totals[event_type] += n
    return json.dumps({"patients": patients, "totals": dict(totals)}, indent=2, sort_keys=True)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(catalog=TINY, workers=1) as url:
        yield url


@pytest.fixture(scope="module")
def faulty_server() -> Iterator[str]:
    faults = FaultConfig(fail_rate=0.5, error_rate=0.2, seed=7, retry_after=0)
    with running_server(catalog=TINY, workers=1, faults=faults) as url:
        yield url


@pytest.fixture(scope="module")
def faulty_medium_server() -> Iterator[str]:
    faults = FaultConfig(fail_rate=0.5, error_rate=0.2, seed=11, retry_after=0)
    with running_server(catalog=MEDIUM, workers=2, faults=faults) as url:
        yield url


@pytest.fixture(scope="module")
def slow_server() -> Iterator[str]:
    with running_server(catalog=TINY, workers=1, faults=FaultConfig(latency=1.0)) as url:
        yield url


@pytest.fixture(scope="module")
def broken_server() -> Iterator[str]:
    with running_server(catalog=TINY, workers=1, faults=FaultConfig(fail_rate=1.0)) as url:
        yield url


runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_counts_an_export(server: str) -> None:
    code, out, err = invoke("tiny", "-s", server)
    assert code == 0, err
    assert out == expected_json("tiny") + "\n"
    assert err == ""


def test_export_id_as_an_option(server: str) -> None:
    code, out, err = invoke("-e", "other", "--server", server)
    assert code == 0, err
    assert out == expected_json("other") + "\n"


def test_server_from_the_environment(server: str) -> None:
    code, out, err = invoke("other", env={SERVER_ENV: server})
    assert code == 0, err
    assert json.loads(out) == json.loads(expected_json("other"))


@pytest.mark.parametrize("threads", ["1", "2", "3"])
@pytest.mark.parametrize("concurrency", ["1", "3"])
def test_every_way_of_counting_gives_the_same_answer(
    server: str, threads: str, concurrency: str
) -> None:
    code, out, err = invoke("tiny", "-s", server, "--threads", threads, "-c", concurrency)
    assert code == 0, err
    assert out == expected_json("tiny") + "\n"


def test_output_file_gets_the_same_bytes(server: str, tmp_path: Path) -> None:
    target = tmp_path / "tiny.json"
    code, out, err = invoke("tiny", "-s", server, "-o", str(target))
    assert code == 0, err
    assert out == ""
    assert target.read_text() == expected_json("tiny") + "\n"
    assert list(tmp_path.iterdir()) == [target]


def test_output_through_a_symlink_replaces_its_target(server: str, tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old\n")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    code, _, err = invoke("tiny", "-s", server, "-o", str(link))
    assert code == 0, err
    assert link.is_symlink()
    assert real.read_text() == expected_json("tiny") + "\n"


def test_a_new_output_file_follows_the_umask(server: str, tmp_path: Path) -> None:
    target = tmp_path / "tiny.json"
    old = os.umask(0o077)
    try:
        code, _, err = invoke("tiny", "-s", server, "-o", str(target))
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="replacing /dev/null needs root")
def test_dev_null_stays_a_device(server: str) -> None:
    before = os.stat("/dev/null")
    code, out, err = invoke("tiny", "-s", server, "-o", "/dev/null")
    assert code == 0, err
    assert out == ""
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode)
    assert after.st_ino == before.st_ino


def test_output_to_a_fifo(server: str, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    code, _, err = invoke("tiny", "-s", server, "-o", str(fifo))
    reader.join(10)
    assert code == 0, err
    assert received == [expected_json("tiny") + "\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize("dash", ["-", "/dev/stdout"])
def test_output_dash_is_stdout(server: str, dash: str) -> None:
    code, out, err = invoke("tiny", "-s", server, "-o", dash)
    assert code == 0, err
    assert out == expected_json("tiny") + "\n"


def test_a_missing_output_directory_is_a_usage_error_before_any_request(tmp_path: Path) -> None:
    with hostile_server({}) as recorder:
        code, out, err = invoke("tiny", "-s", recorder.url, "-o", str(tmp_path / "no" / "x.json"))
    assert code == 2
    assert out == ""
    assert err.startswith("error: "), err
    assert "does not exist" in err
    assert recorder.requests == []


def test_a_failed_run_leaves_the_output_file_alone(broken_server: str, tmp_path: Path) -> None:
    target = tmp_path / "tiny.json"
    target.write_text("previous result\n")
    code, out, _ = invoke("tiny", "-s", broken_server, "--retries", "0", "-o", str(target))
    assert code == 1
    assert out == ""
    assert target.read_text() == "previous result\n"
    assert list(tmp_path.iterdir()) == [target]


def test_time_prints_one_summary_line(server: str) -> None:
    code, out, err = invoke("tiny", "-s", server, "--time")
    assert code == 0, err
    rows = sum(d.rows for d in TINY.downloads("tiny") or ())
    lines = err.splitlines()
    assert len(lines) == 1
    assert f"{rows:,} rows, 3 downloads" in lines[0]
    assert "0 retries, 0 malformed rows" in lines[0]
    assert json.loads(out)["totals"]


def test_faulty_server_still_gives_exact_counts(faulty_server: str) -> None:
    code, out, err = invoke(
        "tiny", "-s", faulty_server, "--retries", "8", "--backoff", "0.01", "--time"
    )
    assert code == 0, err
    assert out == expected_json("tiny") + "\n"
    retries = int(err.split(" retries")[0].rsplit(" ", 1)[1])
    assert retries > 0, "the faulty server should have forced at least one retry"


def test_counting_threads_with_retries_give_exact_counts(faulty_medium_server: str) -> None:
    code, out, err = invoke(
        "medium",
        "-s",
        faulty_medium_server,
        "--threads",
        "2",
        "--retries",
        "10",
        "--backoff",
        "0.01",
        "-c",
        "3",
        "--time",
    )
    assert code == 0, err
    assert out == expected_json("medium", MEDIUM) + "\n"
    retries = int(err.split(" retries")[0].rsplit(" ", 1)[1])
    assert retries > 0, "the faulty server should have forced at least one retry"


def test_a_stalled_server_times_out(slow_server: str) -> None:
    code, out, err = invoke("tiny", "-s", slow_server, "--timeout", "0.2", "--retries", "0")
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "timed out" in err


def test_an_unwritable_output_is_one_error_line(server: str, tmp_path: Path) -> None:
    target = tmp_path / "missing-directory" / "tiny.json"
    code, out, err = invoke("tiny", "-s", server, "-o", str(target))
    assert code == 2  # a usage error, found before anything is downloaded
    assert out == ""
    assert err.startswith("error: Cannot write ")
    assert len(err.splitlines()) == 1


def test_a_download_that_keeps_failing_fails_the_run(broken_server: str) -> None:
    code, out, err = invoke("tiny", "-s", broken_server, "--retries", "1", "-q")
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: Download ")
    assert "2 attempts" in lines[0]
    assert "Traceback" not in err


def test_verbose_shows_the_traceback(broken_server: str) -> None:
    code, _, err = invoke("tiny", "-s", broken_server, "--retries", "0", "--verbose")
    assert code == 1
    assert "Traceback" in err
    assert err.splitlines()[-1].startswith("error: Download ")


def test_unknown_export_is_a_usage_error(server: str) -> None:
    code, out, err = invoke("huge", "-s", server)
    assert code == 2
    assert out == ""
    assert err == "error: Unknown export 'huge'; the server offers: tiny, other.\n"


def test_unreachable_server(tmp_path: Path) -> None:
    code, out, err = invoke("demo", "-s", "http://127.0.0.1:9", "-q", "--backoff", "0.01")
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "http://127.0.0.1:9" in err
    assert "uv run server" in err


def test_list_exports(server: str) -> None:
    code, out, err = invoke("--list", "-s", server)
    assert code == 0, err
    assert json.loads(out) == {"export_ids": ["tiny", "other"]}


def test_list_downloads(server: str) -> None:
    code, out, err = invoke("other", "--list", "-s", server)
    assert code == 0, err
    listing = json.loads(out)
    planned = TINY.downloads("other") or ()
    assert listing["rows"] == sum(d.rows for d in planned)
    assert listing["downloads"] == [d.metadata() for d in planned]


def test_version() -> None:
    code, out, _ = invoke("--version")
    assert code == 0
    assert out.startswith("cli ")


@pytest.mark.parametrize(
    "args",
    [
        ["tiny", "--concurrency", "0"],
        ["tiny", "--retries", "-1"],
        ["tiny", "--timeout", "0"],
        ["tiny", "--bogus"],
        ["tiny", "-e", "other"],
        ["tiny", "-s", "localhost:8000"],
        ["tiny", "-s", "ftp://localhost"],
        [],
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str]) -> None:
    code, out, err = invoke(*args)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")


def test_help_documents_every_option_with_examples() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    assert "Examples:" in out
    assert "--mock" in out
    from typer.main import get_command

    command = get_command(app)
    for parameter in command.params:
        if parameter.param_type_name == "option":
            assert parameter.help, f"{parameter.name} has no help text"  # type: ignore[attr-defined]


def test_mock_counts_demo_as_committed() -> None:
    code, out, err = invoke("demo", "--mock")
    assert code == 0, err
    assert out == (ROOT / "demo.json").read_text()


def test_report_writes_the_run_as_json(server: str, tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    code, out, err = invoke("tiny", "-s", server, "--report", str(target))
    assert code == 0, err
    assert out == expected_json("tiny") + "\n"
    report = json.loads(target.read_text())
    downloads = TINY.downloads("tiny") or []
    assert report["rows"] == sum(download.rows for download in downloads)
    assert [d["id"] for d in report["downloads"]] == [str(d.id) for d in downloads]
    assert report["retries"] == 0
    assert report["counting_core"] in ("compiled", "pure Python")
    assert {"patients": report["patients"], "totals": report["totals"]} == json.loads(out)


def test_report_to_stdout_is_a_usage_error(server: str) -> None:
    code, out, err = invoke("tiny", "-s", server, "--report", "-")
    assert code == 2
    assert out == ""
    assert "stdout" in err


# The CLI as people meet it: formats, conventions, terminals, closed outputs


def test_csv_format_is_one_sorted_row_per_pair(server: str) -> None:
    code, out, err = invoke("tiny", "-s", server, "--format", "csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["patient_id", "event_type", "count"]
    assert rows[1:] == sorted(rows[1:])
    expected = json.loads(expected_json("tiny"))
    assert {(p, t): int(n) for p, t, n in rows[1:]} == {
        (p, t): n for p, types in expected["patients"].items() for t, n in types.items()
    }


def test_table_format_has_patients_down_types_across_and_totals(server: str) -> None:
    code, out, err = invoke("tiny", "-s", server, "-f", "table")
    assert code == 0, err
    expected = json.loads(expected_json("tiny"))
    lines = out.splitlines()
    header = next(line for line in lines if "patient" in line and "heart_rate" in line)
    assert header.split() == ["patient", *sorted(expected["totals"])]
    total = next(line for line in lines if line.strip().startswith("total"))
    assert total.split()[1:] == [f"{expected['totals'][t]:,}" for t in sorted(expected["totals"])]
    for patient in expected["patients"]:
        assert any(line.split()[:1] == [patient] for line in lines)


STATS_COLUMNS = ["count", "mean", "min", "max", "anomalies", "latency"]


def tiny_stats(ranges: dict[str, tuple[Number, Number]] = ISSUE_RANGES) -> dict[str, Any]:
    """tiny's statistics, by the row-by-row reference over the bodies the server sends."""
    bodies = [b"".join(generate_body(download)) for download in TINY.downloads("tiny") or ()]
    merged = bodies[0] + b"".join(body.split(b"\n", 1)[1] for body in bodies[1:])
    return reference(merged, ranges)


def test_stats_in_every_format(server: str) -> None:
    expected = tiny_stats()
    code, out, err = invoke("tiny", "-s", server, "--stats")
    assert code == 0, err
    assert json.loads(out) == expected
    code, out, err = invoke("tiny", "-s", server, "--stats", "--format", "csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["patient_id", "event_type", *STATS_COLUMNS]
    assert rows[1:] == sorted(rows[1:])
    assert {(p, t): [json.loads(cell) for cell in cells] for p, t, *cells in rows[1:]} == {
        (p, t): [figures[name] for name in STATS_COLUMNS]
        for p, types in expected["patients"].items()
        for t, figures in types.items()
    }
    code, out, err = invoke("tiny", "-s", server, "--stats", "-f", "table")
    assert code == 0, err
    lines = [line.split() for line in out.splitlines()]
    assert ["patient", "event", "type", *STATS_COLUMNS] in lines

    def cells(figures: dict[str, Any]) -> list[str]:
        return [
            f"{value:,}" if isinstance(value, int) else f"{value:,.3f}"
            for value in (figures[name] for name in STATS_COLUMNS)
        ]

    for patient, types in expected["patients"].items():
        for event_type, figures in types.items():
            assert [patient, event_type, *cells(figures)] in lines
    for event_type, figures in expected["totals"].items():
        assert ["total", event_type, *cells(figures)] in lines


def test_normal_range_overrides_and_adds(server: str) -> None:
    code, out, err = invoke(
        "tiny",
        "-s",
        server,
        "--stats",
        "--normal-range",
        "heart_rate=60:100",
        "--normal-range",
        "spo2=95.5:99",
        "--normal-range",
        "temperature=36.1:37.5",
    )
    assert code == 0, err
    ranges = {**ISSUE_RANGES, "heart_rate": (60, 100), "spo2": (Fraction(191, 2), 99)}
    expected = tiny_stats(ranges)
    assert expected["totals"] != tiny_stats()["totals"]
    assert json.loads(out) == expected


@pytest.mark.parametrize(
    "args",
    [
        ["--normal-range", "heart_rate=60:100"],
        ["--stats", "--normal-range", "heart_rate=100:60"],
        ["--stats", "--normal-range", "heart_rate"],
        ["--stats", "--normal-range", "heart_rate=low:high"],
    ],
)
def test_a_normal_range_it_cannot_use_is_a_usage_error(args: list[str]) -> None:
    with hostile_server({}) as recorder:
        code, out, err = invoke("tiny", "-s", recorder.url, *args)
        assert recorder.requests == []
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ")


def test_an_unknown_format_is_a_usage_error(server: str) -> None:
    code, _, err = invoke("tiny", "-s", server, "--format", "xml")
    assert code == 2
    assert err.startswith("error: ")


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_has_both_spellings_and_no_bool_noise(flag: str) -> None:
    result = runner.invoke(app, [flag], terminal_width=100)
    assert result.exit_code == 0
    assert "Usage: cli" in result.stdout
    assert "<bool>" not in result.stdout
    assert "--no-" not in result.stdout
    for option in ("--export-id", "--format", "--speed-limit", "--report", "--version"):
        assert option in result.stdout


def test_export_id_option_in_both_spellings(server: str) -> None:
    for spelling in ("--export-id", "--export_id"):
        code, out, err = invoke(spelling, "other", "-s", server)
        assert code == 0, err
        assert out == expected_json("other") + "\n"


@pytest.mark.parametrize(
    "args",
    [
        ["--timeout", "inf"],
        ["--timeout", "nan"],
        ["--backoff", "inf"],
        ["--speed-limit", "nan"],
        ["--speed-time", "0"],
        ["-c", "0"],
        ["--retries", "-1"],
        ["-s", "http://localhost:99999"],
        ["-s", "http://localhost:0"],
        ["-s", "ftp://localhost:8000"],
        ["-s", "http://localhost:8000/?x=1"],
        ["-s", "http://localhost:8000/#top"],
        ["-s", "http:///nohost"],
        ["--mock", "-s", "http://localhost:8000"],
    ],
)
def test_values_it_cannot_use_are_usage_errors_before_any_request(args: list[str]) -> None:
    with hostile_server({}) as recorder:
        env = {SERVER_ENV: recorder.url}
        code, out, err = invoke("tiny", *args, env=env)
        assert recorder.requests == []
    assert code == 2, err
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ")


def test_a_path_prefix_in_the_server_url_is_fine() -> None:
    code, _, err = invoke(
        "--list", "-s", "http://127.0.0.1:9/behind/a/proxy/", "-q", "--retries", "0"
    )
    assert code == 1  # nothing listens there; the URL itself was accepted
    assert "Cannot reach" in err


def test_a_reader_that_goes_away_ends_the_run_quietly(server: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "export_client", "tiny", "-s", server],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()  # as `| head` does once it has what it wants
    with process.stderr:
        err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert err == ""


def test_a_closed_stdout_ends_the_run_quietly(server: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "export_client", "tiny", "-s", server],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.close(1),
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr == ""


def _screen(raw: str, columns: int) -> list[str]:
    """What a terminal `columns` wide shows after `raw`: enough of one to check the display."""
    lines = [""]
    row = 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]", raw):
        if token == "\n":
            row += 1
            lines += [""] * (row + 1 - len(lines))
        elif token == "\r":
            lines[row] = ""  # rich redraws a whole line after a carriage return
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token == "\x1b[2K":
                lines[row] = ""
        else:
            lines[row] += token
            assert len(lines[row]) <= columns, f"a line wider than the terminal: {lines[row]!r}"
    return lines


def on_a_terminal(args: list[str], columns: int) -> tuple[int, str, str]:
    """The CLI with its stderr on a pseudo-terminal `columns` wide: its exit code, its stdout,
    and everything it drew on the terminal."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        [sys.executable, "-m", "export_client", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env={**env, "TERM": "xterm"},
        cwd=ROOT,
    )
    os.close(secondary)
    shown = bytearray()
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # the other end is closed: the run is over
            break
        if not data:
            break
        shown += data
    out, _ = process.communicate(timeout=120)
    os.close(primary)
    return process.returncode, out.decode(), shown.decode()


def test_progress_on_a_narrow_terminal_fits_and_disappears(slow_server: str) -> None:
    code, out, raw = on_a_terminal(["tiny", "-s", slow_server], 60)
    assert code == 0
    assert out == expected_json("tiny") + "\n"
    assert "rows" in raw  # the display was drawn
    screen = _screen(raw.replace("\r\n", "\n"), 60)
    assert [line for line in screen if line.strip()] == []  # and is gone at the end


def test_the_process_ends_with_its_output_whole_and_its_code(server: str) -> None:
    # The entry point ends the process without the interpreter's teardown (os._exit): the
    # result, the summary line and the exit code must all be there as they were before.
    command = [sys.executable, "-m", "export_client"]
    done = subprocess.run(
        [*command, "tiny", "-s", server, "-t"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected_json("tiny") + "\n"
    assert done.stderr.startswith("tiny: ")
    assert done.stderr.count("\n") == 1
    failed = subprocess.run(
        [*command, "nope", "-s", server], capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 2
    assert failed.stdout == ""
    assert failed.stderr.startswith("error: Unknown export 'nope'")


@pytest.mark.parametrize("with_thread", [False, True])
def test_the_process_still_runs_exit_handlers_and_waits_for_threads(with_thread: bool) -> None:
    # What the interpreter's exit does that matters, the fast exit does too.
    script = """if True:
        import atexit, sys, threading, time
        atexit.register(lambda: print("handler ran", file=sys.stderr))
        printed = threading.Event()

        class Stdout:  # tells the thread when the command has printed its line
            def __init__(self, stream):
                self.stream = stream
            def write(self, text):
                self.stream.write(text)
                printed.set()
            def __getattr__(self, name):
                return getattr(self.stream, name)

        sys.stdout = Stdout(sys.stdout)
        if sys.argv[1] == "True":  # still running when the command ends: to be waited for
            late = threading.Thread(target=lambda: (printed.wait(), time.sleep(0.2), print("late")))
            late.start()
        sys.argv = ["cli", "--version"]
        from export_client.__main__ import main
        main()
    """
    done = subprocess.run(
        [sys.executable, "-c", script, str(with_thread)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cli ")
    assert done.stdout.endswith("\nlate\n" if with_thread else ")\n")
    assert done.stderr == "handler ran\n"


def test_rich_is_not_imported_when_stderr_is_not_a_terminal(server: str) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "export_client", "tiny", "-s", server],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "export_client._client" in imported
    assert not [name for name in imported if name.split(".")[0] == "rich"]


def test_limit_rate_caps_the_bytes_per_second_over_all_downloads(server: str) -> None:
    size = sum(len(b"".join(generate_body(download))) for download in TINY.downloads("tiny") or ())
    rate = size // 2  # bytes per second: about two seconds for the whole export
    started = time.monotonic()
    code, out, err = invoke("tiny", "-s", server, "--limit-rate", str(rate), "-c", "3")
    elapsed = time.monotonic() - started
    assert code == 0, err
    assert out == expected_json("tiny") + "\n"
    # The bucket lets a tenth of a second's worth through at once; loosely, for a busy machine.
    assert 1.8 <= elapsed < 20


def test_time_waited_for_the_rate_limit_is_not_the_servers_slowness(server: str) -> None:
    size = sum(len(b"".join(generate_body(download))) for download in TINY.downloads("tiny") or ())
    rate = size // 2
    # A floor four times the rate: the streams run at the rate, but the server is fast.
    args = ["--limit-rate", str(rate), "--speed-limit", str(4 * rate), "--speed-time", "0.3"]
    code, out, err = invoke("tiny", "-s", server, *args, "--retries", "0", "-c", "3")
    assert code == 0, err
    assert out == expected_json("tiny") + "\n"


@pytest.mark.parametrize("rate", ["0", "fast", "20MB", "-5K"])
def test_a_rate_it_cannot_use_is_a_usage_error(rate: str) -> None:
    code, out, err = invoke("tiny", "--limit-rate", rate)
    assert code == 2
    assert out == ""
    assert err.startswith("error: Invalid value for '--limit-rate'")
