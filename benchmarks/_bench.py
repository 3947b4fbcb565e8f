"""What the benchmark scripts share: servers, measured subprocesses, spreads, checks, the machine.

Not a script: `concurrency.py`, `end_to_end.py`, `server_generation.py` and the others import it
(they run as `uv run python benchmarks/<script>.py`, which puts this directory on `sys.path`).

A measured subprocess (`measure`) is reaped with `os.wait4`, whose rusage gives its user+system
CPU seconds and its peak RSS (`ru_maxrss`: the kernel's high-water mark of the process's
resident memory, exact, not sampled; the client is one process, its counting threads
included). While it runs, a psutil sampler records its RSS every `SAMPLE_SECONDS` (a check of
the peak, and with `timeline` the cores it and the server use); the server's CPU comes from
psutil before and after (its main process and its live workers), and so does the CPU that
everything else on the machine used meanwhile (`other_cpu_seconds`): what tells a quiet run
from a disturbed one.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from export_server import ServerProcess, ServerStartError, start_server_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
TRANSFER_ONLY = HERE / "transfer_only.py"
# Measured processes and servers may keep compiled modules, as they would anywhere else.
CHILD_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
CORES = len(os.sched_getaffinity(0))
# RSS from psutil is one read of /proc/<pid>/statm: cheap, but sampled much more often the
# sampler's own CPU would show on a 2-core machine. The exact peak is ru_maxrss anyway.
SAMPLE_SECONDS = 0.05
SERVER_START_SECONDS = 60.0
MB = 1 << 20


# What a measured run of the client records, summarised per variant as median (min..max).
RUN_METRICS = (
    "wall_seconds",
    "cpu_seconds",
    "peak_rss_mb",
    "server_cpu_seconds",
    "other_cpu_seconds",
    "own_seconds",
)


def say(message: str) -> None:
    """A line of the benchmark's progress, on stderr."""
    print(message, file=sys.stderr, flush=True)


class BenchmarkError(Exception):
    """A run failed, or counted something other than the committed result."""


def compile_bytecode(*extra: Path) -> None:
    """Compiles the client's and its dependencies' modules once, as any installed program has.

    Where PYTHONDONTWRITEBYTECODE is set (as on our development machines), every start
    would otherwise compile every imported module again: a third of a second that no
    user pays.
    """
    paths = [*sysconfig.get_paths()["purelib"].split(os.pathsep), str(ROOT / "src")]
    paths += map(str, extra)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *dict.fromkeys(paths)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def machine() -> dict[str, Any]:
    """The machine the benchmark ran on, and how loaded it was when it started."""
    return {
        "cores": psutil.cpu_count(),
        "usable_cores": CORES,
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "load_average_at_start": [round(load, 2) for load in os.getloadavg()],
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(info: Mapping[str, Any]) -> str:
    """The machine in one sentence, for Markdown results."""
    return (
        f"Machine: {info['cores']} cores, {info['memory_gb']} GB memory, "
        f"{info['implementation']} {info['python']}, {info['platform']}, {info['date']}."
    )


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """How the script was run, as a command to paste."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["uv", "run", "python", f"benchmarks/{script}", *arguments])


@dataclass
class Spread:
    """The median of some runs' figure and its range."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def text(self, fmt: str) -> str:
        """`median (min..max)` in a format."""
        return f"{self.median:{fmt}} ({self.min:{fmt}}..{self.max:{fmt}})"


def check_output(export: str, output: Path) -> None:
    """Raises BenchmarkError unless `output` equals the committed `<export>.json` byte for byte.

    Without a committed file (an export of another server) there is nothing to compare with.
    """
    committed = ROOT / f"{export}.json"
    if committed.is_file() and output.read_bytes() != committed.read_bytes():
        raise BenchmarkError(f"the output {output} differs from the committed {committed.name}")


def check_stats_output(export: str, output: bytes) -> None:
    """Raises BenchmarkError unless a statistics result (`--stats`) has the committed counts.

    Its `count`s must be the committed `<export>.json`'s, patient by patient and in the totals,
    and where `results/stats-<export>.json` is committed, it must be those very bytes.
    """
    committed = ROOT / f"{export}.json"
    try:
        document = json.loads(output)
        counts = {
            "patients": {
                patient: {event_type: group["count"] for event_type, group in types.items()}
                for patient, types in document["patients"].items()
            },
            "totals": {name: group["count"] for name, group in document["totals"].items()},
        }
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise BenchmarkError(f"the statistics output is not statistics: {error}") from None
    if committed.is_file() and counts != json.loads(committed.read_bytes()):
        raise BenchmarkError(f"the statistics output's counts differ from {committed.name}")
    stats = RESULTS / f"stats-{export}.json"
    if stats.is_file() and output != stats.read_bytes():
        raise BenchmarkError(f"the statistics output differs from the committed {stats.name}")


def committed_result(export: str) -> bool:
    """Whether the repository holds the result of `export` to compare every run with."""
    return (ROOT / f"{export}.json").is_file()


@contextlib.contextmanager
def running_server(workers: int, cache_dir: Path | None) -> Iterator[ServerProcess]:
    """Starts the project's server on a free loopback port; stops it with SIGTERM on exit.

    Should this script die, the server goes with it (see `export_server.start_server_process`).
    """
    try:
        server = start_server_process(
            workers=workers,
            cache_dir=cache_dir,
            env=CHILD_ENV,
            cwd=ROOT,
            ready_timeout=SERVER_START_SECONDS,
        )
    except ServerStartError as error:
        raise BenchmarkError(str(error)) from None
    with server:
        yield server


def tree_cpu_seconds(process: psutil.Process) -> float:
    """CPU seconds used so far by a live process and its live descendants (and reaped ones)."""
    total = 0.0
    for member in [process, *_children(process)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = member.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (every core, every process)."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


@dataclass
class Sample:
    """One sample of a measured run: when, the process's RSS, its and the server's CPU so far."""

    seconds: float
    rss_mb: float
    cpu_seconds: float
    server_cpu_seconds: float


class Sampler(threading.Thread):
    """Samples a process's RSS (and, with `timeline`, its and a server's CPU) until stopped."""

    def __init__(
        self, pid: int, *, timeline: bool = False, server: psutil.Process | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.peak_rss_mb = 0.0
        self.samples: list[Sample] = []
        self._timeline = timeline
        self._server = server
        self._done = threading.Event()
        try:
            self._process: psutil.Process | None = psutil.Process(pid)
        except psutil.NoSuchProcess:
            self._process = None

    def run(self) -> None:
        process = self._process
        if process is None:
            return
        started = time.perf_counter()
        while not self._done.is_set():
            try:
                with process.oneshot():
                    rss = process.memory_info().rss / MB
                    cpu = sum(process.cpu_times()[:2]) if self._timeline else 0.0
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                return
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            if self._timeline:
                server = 0.0 if self._server is None else tree_cpu_seconds(self._server)
                self.samples.append(Sample(time.perf_counter() - started, rss, cpu, server))
            self._done.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class Measured:
    """What any measured subprocess yields."""

    wall_seconds: float
    cpu_seconds: float  # user + system, from rusage: the process and any it reaped
    peak_rss_mb: float  # ru_maxrss: the exact peak of the largest process
    sampled_peak_rss_mb: float  # the peak of the RSS samples, a check of the one above
    other_cpu_seconds: float  # CPU of everything else on the machine during the run
    stdout: str
    stderr: str
    server_cpu_seconds: float | None = None  # our server's, main process and workers
    samples: list[Sample] = field(default_factory=list)

    @property
    def cores_busy(self) -> float:
        """The share of the cores that the run (and its server) kept busy."""
        return (self.cpu_seconds + (self.server_cpu_seconds or 0.0)) / (CORES * self.wall_seconds)

    def figures(self) -> dict[str, Any]:
        """The measured figures, rounded, for the JSON results."""
        return {
            "wall_seconds": round(self.wall_seconds, 4),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "sampled_peak_rss_mb": round(self.sampled_peak_rss_mb, 1),
            "server_cpu_seconds": None
            if self.server_cpu_seconds is None
            else round(self.server_cpu_seconds, 2),
            "other_cpu_seconds": round(self.other_cpu_seconds, 2),
            "cores_busy": round(self.cores_busy, 3),
        }


def measure(
    command: list[str],
    *,
    timeout: float,
    server: ServerProcess | None = None,
    timeline: bool = False,
    env: Mapping[str, str] | None = None,
) -> Measured:
    """Runs a command, measuring its wall time, CPU and memory; raises unless it exits 0.

    With `server`, also the CPU that the server's process tree used meanwhile; with
    `timeline`, the process's CPU and RSS and the server's CPU every `SAMPLE_SECONDS`.
    """
    server_process = psutil.Process(server.process.pid) if server is not None else None
    server_cpu = tree_cpu_seconds(server_process) if server_process is not None else 0.0
    machine_cpu = machine_cpu_seconds()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=out, stderr=err, cwd=ROOT, env={**CHILD_ENV, **(env or {})}
        )
        sampler = Sampler(process.pid, timeline=timeline, server=server_process)
        sampler.start()
        # A watchdog instead of Popen.wait(timeout): os.wait4 must be the one to reap the child,
        # since only it returns the child's rusage.
        watchdog = threading.Timer(timeout, process.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            # Ctrl-C or the like: do not leave a measured process running behind us.
            process.kill()
            process.wait()
            raise
        finally:
            wall = time.perf_counter() - started
            watchdog.cancel()
            sampler.stop()
        machine_cpu = machine_cpu_seconds() - machine_cpu
        if server_process is not None:
            server_cpu = tree_cpu_seconds(server_process) - server_cpu
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    if process.returncode != 0:
        raise BenchmarkError(
            f"{shlex.join(command)} exited with {process.returncode}: {stderr.strip()[-2000:]}"
        )
    cpu = usage.ru_utime + usage.ru_stime
    own = cpu + (server_cpu if server_process is not None else 0.0)
    return Measured(
        wall_seconds=wall,
        cpu_seconds=cpu,
        peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        sampled_peak_rss_mb=sampler.peak_rss_mb,
        # The sampler (this process) is counted as other work: it is part of the disturbance.
        other_cpu_seconds=max(0.0, machine_cpu - own),
        stdout=stdout,
        stderr=stderr,
        server_cpu_seconds=server_cpu if server_process is not None else None,
        samples=sampler.samples,
    )


def core_use(samples: Sequence[Sample]) -> list[list[float]]:
    """Per sampling interval: its end, the cores the process used, the cores the server used."""
    rows = []
    for before, after in itertools.pairwise(samples):
        span = after.seconds - before.seconds
        if span <= 0:
            continue
        rows.append(
            [
                round(after.seconds, 3),
                round((after.cpu_seconds - before.cpu_seconds) / span, 2),
                round((after.server_cpu_seconds - before.server_cpu_seconds) / span, 2),
            ]
        )
    return rows


def other_work(interval: float = 1.0, top: int = 3) -> tuple[float, list[str]]:
    """How busy the machine is while this script waits: a share of all cores, and who is busy.

    Called between runs, when this script and its idle server use next to nothing, so the
    share is other work's.
    """
    candidates = list(psutil.process_iter(["pid", "cmdline"]))
    for process in candidates:
        with contextlib.suppress(psutil.Error):
            process.cpu_percent(None)
    share = psutil.cpu_percent(interval) / 100
    busiest = []
    for process in candidates:
        with contextlib.suppress(psutil.Error):
            busiest.append((process.cpu_percent(None), process))
    busiest.sort(key=lambda entry: entry[0], reverse=True)
    names = [
        f"{process.pid} {percent:.0f}% {' '.join(process.info['cmdline'] or [])[:80]}"
        for percent, process in busiest[:top]
        if percent >= 5
    ]
    return share, names


def wait_until_quiet(
    say: Callable[[str], None],
    *,
    threshold: float = 0.1,
    patience: float = 900.0,
    poll: float = 5.0,
) -> float:
    """Waits (at most `patience` s) until other work uses less than `threshold` of the cores.

    Returns the share other work used at the last look; `say` gets a line for each wait.
    """
    deadline = time.monotonic() + patience
    while True:
        share, names = other_work()
        if share < threshold or time.monotonic() > deadline:
            return share
        say(f"waiting for a quiet machine ({share:.0%} busy): {'; '.join(names)}")
        time.sleep(poll)


def disturbed(batch: Sequence[Mapping[str, Any]], max_other: float) -> bool:
    """Whether other work used more than `max_other` of the cores during any run of a repeat."""
    return any(run["other_cpu_seconds"] > max_other * CORES * run["wall_seconds"] for run in batch)


@dataclass
class Repeats:
    """Runs every variant once per repeat, in an order that rotates from one repeat to the
    next; a repeat that other work disturbed (`disturbed`) is kept apart and run again, at
    most `retries` times in all. Before each repeat, waits for a quiet machine."""

    repeats: int
    max_other: float
    retries: int
    patience: float
    say: Callable[[str], None]
    runs: list[dict[str, Any]] = field(default_factory=list)
    discarded: list[list[dict[str, Any]]] = field(default_factory=list)

    def run(
        self,
        variants: Sequence[str],
        measure_one: Callable[[str], dict[str, Any]],
        describe: Callable[[dict[str, Any]], str],
    ) -> None:
        """`measure_one(variant)` gives a run's figures; `describe(run)` a line about it."""
        repeat = 0
        while repeat < self.repeats:
            busy = wait_until_quiet(self.say, patience=self.patience)
            shift = (repeat + len(self.discarded)) % len(variants)
            batch = []
            for variant in [*variants[shift:], *variants[:shift]]:
                run = {"variant": variant, "repeat": repeat, **measure_one(variant)}
                run["other_work_before"] = round(busy, 3)
                batch.append(run)
                self.say(f"#{repeat + 1} {variant}: {describe(run)}")
            if disturbed(batch, self.max_other) and len(self.discarded) < self.retries:
                self.say(f"#{repeat + 1} discarded: other work took over {self.max_other:.0%}")
                self.discarded.append(batch)
                continue
            self.runs.extend(batch)
            repeat += 1


def add_repeat_options(
    parser: argparse.ArgumentParser, *, retries: int, patience: float, timeout: float
) -> None:
    """The options of `Repeats`, each run's timeout and where results go, alike in every
    script."""
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.1,
        help="a repeat in which other work used more than this share of the cores is run again",
    )
    parser.add_argument("--retries", type=int, default=retries, help="repeats run again, at most")
    parser.add_argument(
        "--patience", type=float, default=patience, help="seconds to wait for quiet"
    )
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds per run")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where results go")


def write_results(
    stem: Path,
    text: str,
    *,
    command: str,
    info: Mapping[str, Any],
    settings: Mapping[str, Any],
    summary: Mapping[str, Any],
    repeats: Repeats,
) -> None:
    """`stem`.md (the table) and `stem`.json: the command, the machine, the settings, the
    summary, every run and the repeats discarded; each file whole or not at all."""
    document = {
        "command": command,
        "machine": info,
        "settings": json.loads(json.dumps(settings, default=str)),
        "summary": summary,
        "runs": repeats.runs,
        "discarded_repeats": repeats.discarded,
    }
    write_atomically(stem.with_suffix(".json"), json.dumps(document, indent=2) + "\n")
    write_atomically(stem.with_suffix(".md"), text)
    print(f"wrote {stem}.json and .md", file=sys.stderr)


def write_atomically(path: Path, text: str) -> None:
    """Writes a result file whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
