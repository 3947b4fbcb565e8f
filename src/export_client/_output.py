"""Where a result is written, so that a reader never sees half of one and nothing is damaged.

- `-` is standard output, and so are `/dev/stdout`, `/dev/fd/N` and `/proc/self/fd/N` (the
  open descriptor is written, not reopened).
- A regular file, or a new one, is replaced atomically: a temporary file beside it, then a
  rename. Through a symlink, the link's target is replaced and the link stays. A replaced
  file keeps its mode (and its owner, where the process may set it); a new one gets
  `0666 & ~umask`, like any file a shell redirection creates.
- Anything else that exists (a device such as `/dev/null`, a FIFO, a socket) is written in
  place, never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass

_DESCRIPTOR = re.compile(r"/dev/(?:fd/(\d+)|(stdout|stderr))|/proc/self/fd/(\d+)")
_STANDARD = {"stdout": 1, "stderr": 2}


class OutputError(Exception):
    """The output cannot be written where it was asked for."""


@dataclass(frozen=True)
class Output:
    """A place to write one result, checked before any work is done."""

    path: str  # as given; "-" for standard output
    descriptor: int | None = None  # an already open file descriptor to write to
    replace: str | None = None  # the regular file (symlinks resolved) to replace atomically

    @classmethod
    def at(cls, path: str) -> Output:
        """Where `path` writes to; OutputError if it cannot be written (before any download)."""
        if path == "-":
            return cls(path, descriptor=1)
        named = _DESCRIPTOR.fullmatch(os.path.abspath(path))
        if named:
            number = named.group(1) or named.group(3)
            return cls(path, descriptor=int(number) if number else _STANDARD[named.group(2)])
        try:
            kind = os.stat(path).st_mode
        except FileNotFoundError:
            kind = None
        except OSError as error:
            raise OutputError(f"Cannot write {path}: {_reason(error)}.") from None
        if kind is not None and not stat.S_ISREG(kind):
            if stat.S_ISDIR(kind):
                raise OutputError(f"Cannot write {path}: it is a directory.")
            if not os.access(path, os.W_OK):
                raise OutputError(f"Cannot write {path}: permission denied.")
            return cls(path)
        target = os.path.realpath(path)
        if kind is not None and not os.access(target, os.W_OK):
            # Replacing needs only the directory's permission, but a file made read-only
            # says: do not overwrite me.
            raise OutputError(f"Cannot write {path}: permission denied.")
        directory = os.path.dirname(target)
        if not os.path.isdir(directory):
            raise OutputError(f"Cannot write {path}: the directory {directory} does not exist.")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OutputError(f"Cannot write {path}: the directory {directory} is not writable.")
        return cls(path, replace=target)

    def write(self, data: bytes) -> None:
        """Writes `data`; OSError if that fails (a replaced file is then untouched)."""
        if self.descriptor in (1, 2):
            # Through Python's own stream, which may not be the descriptor itself (tests).
            stream = sys.stdout if self.descriptor == 1 else sys.stderr
            if stream is None:  # the process was started with it closed
                raise OSError(errno.EBADF, "the descriptor is closed")
            stream.flush()
            stream.buffer.write(data)
            stream.buffer.flush()
        elif self.descriptor is not None:
            _write_all(self.descriptor, data)
        elif self.replace is not None:
            _replace(self.replace, data)
        else:
            with open(self.path, "wb") as file:
                file.write(data)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def _replace(target: str, data: bytes) -> None:
    try:
        existing: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        existing = None
    directory = os.path.dirname(target)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.")
    try:
        with os.fdopen(fd, "wb") as file:
            # mkstemp's private 0600 would outlive the rename.
            if existing is None:
                os.fchmod(file.fileno(), 0o666 & ~_umask())
            else:
                os.fchmod(file.fileno(), stat.S_IMODE(existing.st_mode))
                if (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
                    # Only root may give a file away; otherwise it stays ours.
                    with contextlib.suppress(PermissionError):
                        os.fchown(file.fileno(), existing.st_uid, existing.st_gid)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    # The only way to read the umask is to set it; the result is written with the counting
    # threads stopped, so nothing else can create a file meanwhile.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(error: OSError) -> str:
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]
