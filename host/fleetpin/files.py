"""Writing the files fleetpin produces: whole or not at all, with a clear error.

Where an output goes depends on what the path is now:
  - `-`: standard output;
  - nothing, or a regular file: a temporary file is created exclusively (O_EXCL: never an
    existing name, never through a symlink) in the same folder, written, synced and renamed
    over the path, so a crash or a full disk never leaves half a file; a file that existed
    keeps its mode, a new one gets the umask's;
  - a symlink to a regular file (or to nothing): the link itself is replaced, never followed
    (as root in a shared folder, following a planted link would overwrite its target);
  - a FIFO or a character device (`-o /dev/null`, `/dev/stdout`), directly or through a
    symlink: written to, never replaced (replacing /dev/null with a regular file breaks the
    whole machine);
  - a folder, a block device or a socket: refused.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

import click

from fleetpin.errors import UsageError

STDOUT = "-"
_HINT = "check the path: its folder must be a writable directory"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _stat(path: Path) -> os.stat_result | None:
    """What a symlink points to (None: nothing, a dangling link or a loop)."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # a symlink loop
        return None


def _fstat(fd: int) -> os.stat_result:
    return os.fstat(fd)


def _streams(mode: int) -> bool:
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Writes `data` to `path` as the module docstring says; UsageError naming the file if it
    cannot be written."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if str(path) == STDOUT:
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return path
    try:
        st = _lstat(path)
        if st is not None and stat.S_ISLNK(st.st_mode):
            target = _stat(path)
            if target is not None and not stat.S_ISREG(target.st_mode):
                st = target  # a link to a device or a FIFO is written through, anything else refused
        if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            _write_into(path, st, raw)
            return path
        _replace(path, st, raw)
    except OSError as e:
        raise UsageError(f"{path}: cannot write: {e.strerror or e}", hint=_HINT) from None
    return path


def _write_into(path: Path, st: os.stat_result, raw: bytes) -> None:
    """Writes into an existing FIFO or character device; refuses anything else."""
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise UsageError(f"{path} is a folder", hint="give a file name (-o FOLDER/NAME)")
    if not _streams(mode):
        what = "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file"
        raise UsageError(f"{path} is {what}: fleetpin writes files, FIFOs and character devices only",
                         hint="give a file name")
    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
    try:
        now = _fstat(fd).st_mode
        if not _streams(now):  # it changed since it was looked at: write nothing
            raise UsageError(f"{path} changed while it was being opened", hint="run the command again")
        view = memoryview(raw)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def _replace(path: Path, st: os.stat_result | None, raw: bytes) -> None:
    """Writes a temporary file beside `path` (exclusively created) and renames it over `path`."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if st is not None and stat.S_ISREG(st.st_mode):
        mode = stat.S_IMODE(st.st_mode)  # a file that existed keeps its mode
    else:
        mode = 0o666 & ~_umask()  # what open() would have given a new file
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_output(out_file: Path | None, text: str, done: str) -> None:
    """`text` on standard output (no -o, or -o -), or written to out_file (its folder created)
    and then "OUT_FILE: done" on stderr. Shared with `fleetpin import`."""
    if out_file is None or str(out_file) == STDOUT:
        click.echo(text, nl=False)
        return
    write_atomic(out_file, text)
    click.echo(f"{out_file}: {done}", err=True)
