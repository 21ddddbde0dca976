"""fleetpin.files: every output file fleetpin writes (bundles, signer sets, exports, receipts,
registry exports). A regular file is replaced whole through a temporary file created exclusively
in its folder; an output that is not a regular file (a FIFO, a character device such as
/dev/null, `-` for standard output) is written to, never replaced.

/dev/null itself is never touched: a FIFO made here stands in for special files, and a
character device is a regular file here that fleetpin.files is made to see as one."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from fleetpin import files
from fleetpin.cli import main
from fleetpin.errors import UsageError

DATA = b"fleetpin output\n" * 100


def _read_fifo(path: Path, out: list[bytes]) -> threading.Thread:
    def reader() -> None:
        with open(path, "rb") as f:
            out.append(f.read())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    return t


def test_a_regular_file_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "out" / "bundle.fpb"
    files.write_atomic(target, DATA)
    assert target.read_bytes() == DATA
    files.write_atomic(target, b"second")
    assert target.read_bytes() == b"second" and os.listdir(target.parent) == ["bundle.fpb"]


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "signers.json"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    files.write_atomic(target, DATA)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_a_new_file_gets_the_umask_mode_not_the_temporary_files(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        files.write_atomic(tmp_path / "new.json", DATA)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640


def test_the_temporary_file_follows_no_symlink(tmp_path: Path) -> None:
    """A temporary name someone else made first (here: the name fleetpin used to use, as a
    symlink to a file of theirs... or of root's) is never opened: the file it points to is
    untouched and the output is written."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    target = out / "policy.xml"
    for name in ("policy.xml.tmp", ".policy.xml.tmp"):
        (out / name).symlink_to(victim)
    files.write_atomic(target, DATA)
    assert victim.read_bytes() == b"precious"
    assert target.read_bytes() == DATA and not target.is_symlink()
    assert sorted(os.listdir(out)) == [".policy.xml.tmp", "policy.xml", "policy.xml.tmp"]


def test_a_fifo_is_written_to_never_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = _read_fifo(fifo, got)
    writer = threading.Thread(target=files.write_atomic, args=(fifo, DATA), daemon=True)
    writer.start()
    writer.join(10)
    reader.join(2)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert got == [DATA]
    assert os.listdir(tmp_path) == ["pipe"]


def test_a_symlink_to_a_fifo_is_written_through(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to(fifo)
    got: list[bytes] = []
    reader = _read_fifo(fifo, got)
    files.write_atomic(tmp_path / "link", DATA)
    reader.join(5)
    assert got == [DATA] and (tmp_path / "link").is_symlink()


def test_a_symlink_to_a_regular_file_is_replaced_not_followed(tmp_path: Path) -> None:
    """As root in a shared folder, following a planted link would overwrite its target."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "out.json"
    link.symlink_to(victim)
    files.write_atomic(link, DATA)
    assert victim.read_bytes() == b"precious"
    assert not link.is_symlink() and link.read_bytes() == DATA


class _FakeStat:
    """A character device's stat result, for a regular file standing in for /dev/null."""

    def __init__(self, real: os.stat_result) -> None:
        self.real = real
        self.st_mode = stat.S_IFCHR | 0o666

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_character_device_is_written_to_never_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fleetpin export android policy.toml -o /dev/null` run as root used to replace the
    /dev/null device with a regular file. Here a regular file plays /dev/null: fleetpin.files
    sees it as a character device (its stat calls are made to say so)."""
    standin = tmp_path / "null"
    standin.write_bytes(b"")
    real_stat, real_fstat = files._lstat, files._fstat
    standin_ino = os.stat(standin).st_ino

    def lstat(path: Any) -> Any:
        st = real_stat(path)
        return _FakeStat(st) if st is not None and st.st_ino == standin_ino else st

    def fstat(fd: int) -> Any:
        st = real_fstat(fd)
        return _FakeStat(st) if st.st_ino == standin_ino else st

    def no_replace(*args: Any) -> None:
        raise AssertionError("the device was replaced")

    monkeypatch.setattr(files, "_lstat", lstat)
    monkeypatch.setattr(files, "_fstat", fstat)
    monkeypatch.setattr(files.os, "replace", no_replace)
    files.write_atomic(standin, DATA)
    assert standin.read_bytes() == DATA and os.listdir(tmp_path) == ["null"]


def test_dash_is_standard_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    monkeypatch.chdir(tmp_path)
    files.write_atomic(Path("-"), DATA)
    assert capfdbinary.readouterr().out == DATA
    files.write_output(Path("-"), "text\n", "written")
    out = capfdbinary.readouterr()
    assert out.out == b"text\n" and b"-: written" not in out.err
    assert os.listdir(tmp_path) == []


def test_a_folder_or_a_block_device_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="is a folder"):
        files.write_atomic(tmp_path, DATA)
    standin = tmp_path / "disk"
    standin.write_bytes(b"")
    real = files._lstat

    class Block(_FakeStat):
        def __init__(self, st: os.stat_result) -> None:
            super().__init__(st)
            self.st_mode = stat.S_IFBLK | 0o660

    monkeypatch.setattr(files, "_lstat", lambda p: Block(real(p)) if Path(p) == standin else real(p))
    with pytest.raises(UsageError, match="block device"):
        files.write_atomic(standin, DATA)
    assert standin.read_bytes() == b""


def test_export_to_a_fifo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command from the report, with a FIFO in place of /dev/null."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[defaults]\nexpires = 2099-01-01\n\n[[domain]]\nhost = "api.example.com"\npins = [\n'
                      '  { pin = "oSrp/5XXFZvdPgB/zusqKsySlTDQS6TMwLxYGO7OEfE=", label = "primary" },\n'
                      '  { pin = "STrzqpZCtgNeLswOo+p7u+rUjwK0QieED7THMpfQnGs=", label = "backup" },\n]\n')
    fifo = tmp_path / "null"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = _read_fifo(fifo, got)
    assert main(["export", "android", str(policy), "-o", str(fifo)]) == 0, capsys.readouterr()
    reader.join(5)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and b"network-security-config" in got[0]
