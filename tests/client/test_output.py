"""Writing a result: atomic for files, in place for devices and FIFOs, never damaging."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from export_client._output import Output, OutputError


def test_a_new_file_gets_the_bytes_and_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    old = os.umask(0o027)
    try:
        Output.at(str(target)).write(b"{}\n")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"{}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_replacing_keeps_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    target.chmod(0o600)
    Output.at(str(target)).write(b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_symlink_stays_and_its_target_is_replaced(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_bytes(b"old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    Output.at(str(link)).write(b"new")
    assert link.is_symlink()
    assert real.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]


def test_a_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "new.json")
    Output.at(str(link)).write(b"1")
    assert link.is_symlink()
    assert (tmp_path / "new.json").read_bytes() == b"1"


def test_a_fifo_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    Output.at(str(fifo)).write(b"through the pipe")
    reader.join(10)
    assert received == [b"through the pipe"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_dev_null_is_written_never_replaced() -> None:
    before = os.stat("/dev/null")
    Output.at("/dev/null").write(b"gone")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


@pytest.mark.parametrize("path", ["-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"])
def test_standard_output_is_written_through_its_descriptor(path: str) -> None:
    assert Output.at(path).descriptor == 1


def test_a_failed_write_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.json"
    target.write_bytes(b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        Output.at(str(target)).write(b"new")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_relative_path_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Output.at("plain.json").write(b"1")
    assert (tmp_path / "plain.json").read_bytes() == b"1"


def test_a_missing_directory_is_found_at_once(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        Output.at(str(tmp_path / "nowhere" / "out.json"))


def test_a_directory_is_no_output(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a directory"):
        Output.at(str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_directory_is_found_at_once(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            Output.at(str(locked / "out.json"))
    finally:
        locked.chmod(0o700)
