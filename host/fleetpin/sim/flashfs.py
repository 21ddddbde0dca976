"""A virtual board's flash: one file holding the whole flash image, with LittleFS where the
board's firmware mounts it, exposed as the file system the agent's store expects.

The file is a full flash image of the board's size (4 MB by default, as esptool's read-flash
would dump it, and as the mock ROM bootloader writes it), so a board provisioned through
esptool boots from the same file. The filesystem is where the firmware on that flash puts it,
as MicroPython >= 1.26 does at boot: the partition table at partition_table_offset (parsed by
image.read_partition_table) ends with the last partition, and the `vfs` region runs from there
to the end of flash (or is the table's own `vfs` partition, the older layout). A blank flash
(no table yet) falls back to the board's fs_start. LittleFS uses the board's geometry
(boards/*.toml): block 4096, read/prog 32, lookahead 32, cycles 100.

Durability: every block program and erase is written through to the file at once (pwrite), in
the order littlefs issues them. littlefs is copy-on-write with atomic metadata commits, so a
board process killed at any point leaves an image that mounts, holding the old or the new state
of each file (the same power-cut model tests/device/faultfs.py checks the store against).

At boot, as MicroPython does: a blank filesystem region is formatted; a region that does not
mount while its first block is not blank is an error (the real board would print a warning
every 3 s and never run main.py).

    flash = FlashFS.open_image(path, board)       # creates a blank image if path is missing
    fs = flash.store_fs()                          # pinagent.store.FS over it
    flash.read_file("/fleetpin/bundle.bin"); flash.write_file(path, data)   # host-side helpers
    board_mac(path), mac_text(path)               # the board's base MAC: its ROM's, its agent's
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import littlefs
from littlefs.errors import LittleFSError

from fleetpin.errors import FleetpinError, UsageError
from fleetpin.line.boards import MIB, Board
from fleetpin.line.image import PART_TABLE_MAX, FirmwareError, fs_bounds, read_partition_table

S_IFDIR = 0x4000
S_IFREG = 0x8000


def board_mac(flash: Path) -> tuple[int, ...]:
    """A stable base MAC per virtual board, derived from its flash file (the mock ROM gives every
    board of a chip the same one, which a device registry keyed on the MAC cannot tell apart).
    Espressif's OUI, as the mock uses. Its ROM bootloader (sim.rom) reports it to esptool and its
    agent (sim.board) to IDENTIFY, as machine.unique_id() does on a real board."""
    suffix = hashlib.sha256(str(flash.resolve()).encode()).digest()[:3]
    return (0x24, 0x0A, 0xC4, *suffix)


def mac_text(flash: Path) -> str:
    """board_mac as esptool prints it: aa:bb:cc:dd:ee:ff."""
    return ":".join(f"{b:02x}" for b in board_mac(flash))


class FlashError(FleetpinError):
    """The flash image cannot be used (wrong size, unmountable filesystem, unreadable file)."""


def _oserror(e: LittleFSError) -> OSError:
    code = -e.code if e.code < 0 else errno.EIO
    return OSError(code, os.strerror(code))


class _WriteThrough(littlefs.UserContext):
    """The filesystem region in memory for reads, every program and erase also written to the
    image file at its offset (so the file is always what the flash chip would hold)."""

    def __init__(self, buffer: bytearray, fd: int, offset: int) -> None:
        super().__init__(buffer=buffer)
        self.fd = fd
        self.offset = offset
        self.writes = 0

    def read(self, cfg: Any, block: int, off: int, size: int) -> bytearray:
        start = block * cfg.block_size + off
        return self.buffer[start : start + size]

    def prog(self, cfg: Any, block: int, off: int, data: bytes) -> int:
        start = block * cfg.block_size + off
        self.buffer[start : start + len(data)] = data
        os.pwrite(self.fd, data, self.offset + start)
        self.writes += 1
        return 0

    def erase(self, cfg: Any, block: int) -> int:
        start = block * cfg.block_size
        blank = b"\xff" * cfg.block_size
        self.buffer[start : start + cfg.block_size] = blank
        os.pwrite(self.fd, blank, self.offset + start)
        self.writes += 1
        return 0

    def sync(self, cfg: Any) -> int:
        return 0  # each write is already in the file; a killed process loses nothing written


class _File:
    """A littlefs file with MicroPython's behaviour: OSError(errno) instead of LittleFSError."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def read(self, n: int = -1) -> bytes:
        try:
            return bytes(self._f.read(n))
        except LittleFSError as e:
            raise _oserror(e) from None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            n = self._f.write(bytes(data))
        except LittleFSError as e:
            raise _oserror(e) from None
        return len(data) if n is None else int(n)

    def close(self) -> None:
        try:
            self._f.close()  # littlefs commits the file here
        except LittleFSError as e:
            raise _oserror(e) from None

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _OsModule:
    """The subset of MicroPython's `os` that pinagent.store.FS uses, over one LittleFS."""

    def __init__(self, lfs: littlefs.LittleFS) -> None:
        self._lfs = lfs

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except LittleFSError as e:
            raise _oserror(e) from None

    def stat(self, path: str) -> tuple[int, ...]:
        st = self._call(self._lfs.stat, path)
        mode = S_IFDIR if st.type == littlefs.LFSStat.TYPE_DIR else S_IFREG
        return (mode, 0, 0, 0, 0, 0, st.size, 0, 0, 0)

    def listdir(self, path: str) -> list[str]:
        return list(self._call(self._lfs.listdir, path))

    def mkdir(self, path: str) -> None:
        self._call(self._lfs.mkdir, path)

    def remove(self, path: str) -> None:
        self._call(self._lfs.remove, path)

    def rename(self, src: str, dst: str) -> None:
        self._call(self._lfs.rename, src, dst)

    def statvfs(self, path: str) -> tuple[int, ...]:
        total = self._lfs.block_count
        free = total - self._call(lambda: self._lfs.used_block_count)
        bs = self._lfs.cfg.block_size
        return (bs, bs, total, free, free, 0, 0, 0, 0, 255)


class FlashFS:
    """A flash image file with a mounted LittleFS. Close it (or use `with`) to release the file."""

    def __init__(self, path: Path, board: Board, flash_size: int, fd: int, lfs: littlefs.LittleFS,
                 ctx: _WriteThrough, formatted: bool, fs_offset: int | None = None) -> None:
        self.path = path
        self.board = board
        self.flash_size = flash_size
        self.fs_offset = board.fs_start if fs_offset is None else fs_offset
        self.formatted = formatted  # True if this open found a blank region and formatted it
        self._fd = fd
        self._lfs = lfs
        self._ctx = ctx
        self.os = _OsModule(lfs)

    # ---- opening

    @classmethod
    def open_image(cls, path: str | Path, board: Board, flash_size: int | None = None, create: bool = True) -> FlashFS:
        """Opens (or creates, blank) the flash image at `path` and mounts its filesystem.

        flash_size: bytes; default the size of an existing file, else the board's smallest."""
        path = Path(path)
        if not path.exists():
            if not create:
                raise UsageError(f"{path}: no such flash image", hint="omit it to start with a blank flash")
            size = flash_size or board.flash_sizes[0] * MIB
            blank_image(path, size)
        size = path.stat().st_size
        if flash_size is not None and size != flash_size:
            raise FlashError(f"{path}: {size} bytes, the board has {flash_size}", hint="use an image of this flash size")
        if size % MIB or size // MIB not in board.flash_sizes:
            raise FlashError(
                f"{path}: {size} bytes is not a flash size of {board.name} ({', '.join(f'{s} MB' for s in board.flash_sizes)})",
                hint="pass a full flash image (esptool read-flash 0 ALL), not a filesystem image",
            )
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise FlashError(f"{path}: cannot open: {e.strerror}") from None
        try:
            return cls._mount(path, board, size, fd)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _mount(cls, path: Path, board: Board, size: int, fd: int) -> FlashFS:
        fs_start, fs_end = fs_region(path, fd, board, size)
        region = fs_end - fs_start
        buf = bytearray(os.pread(fd, region, fs_start))
        if len(buf) != region:
            raise FlashError(f"{path}: short read")
        ctx = _WriteThrough(buf, fd, fs_start)
        cfg: dict[str, Any] = dict(
            block_size=board.fs_block_size,
            read_size=board.fs_read_size,
            prog_size=board.fs_prog_size,
            lookahead_size=board.fs_lookahead_size,
            block_cycles=board.fs_block_cycles,
            block_count=region // board.fs_block_size,
        )
        lfs = littlefs.LittleFS(context=ctx, mount=False, **cfg)
        formatted = False
        try:
            lfs.mount()
        except LittleFSError:
            if any(b != 0xFF for b in buf[: board.fs_block_size]):
                raise FlashError(
                    f"{path}: the filesystem at 0x{fs_start:x} does not mount and is not blank "
                    "(a real board would print a warning every 3 s and never run main.py)",
                    hint="erase the flash (delete the file) or write a good image with fleetpin image build",
                ) from None
            lfs.format()  # what MicroPython's _boot.py does with a blank vfs partition
            lfs.mount()
            formatted = True
        return cls(path, board, size, fd, lfs, ctx, formatted, fs_start)

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self._lfs.unmount()
            except LittleFSError:
                pass
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FlashFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the agent's view

    def open(self, path: str, mode: str = "rb") -> _File:
        if "b" not in mode:
            mode += "b"
        try:
            return _File(self._lfs.open(path, mode))
        except LittleFSError as e:
            raise _oserror(e) from None

    def store_fs(self) -> Any:
        """pinagent.store.FS over this flash: what the agent's store and reports take."""
        from pinagent.store import FS

        return FS(self.os, self.open)

    @property
    def fs_size(self) -> int:
        """Bytes of the filesystem region (from fs_offset)."""
        return len(self._ctx.buffer)

    @property
    def writes(self) -> int:
        """Block programs and erases so far (each one went to the file)."""
        return self._ctx.writes

    # ---- host-side helpers (seeding a board, inspecting one)

    def read_file(self, path: str) -> bytes | None:
        try:
            with self.open(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def write_file(self, path: str, data: bytes) -> None:
        """Writes a file atomically (temp, close, rename), creating its directory."""
        parent = path.rsplit("/", 1)[0]
        if parent:
            try:
                self._lfs.makedirs(parent, exist_ok=True)
            except LittleFSError as e:
                raise _oserror(e) from None
        tmp = path + ".tmp"
        with self.open(tmp, "wb") as f:
            f.write(data)
        self.os.rename(tmp, path)

    def files(self) -> Iterator[str]:
        for root, _dirs, names in self._lfs.walk("/"):
            for n in names:
                yield (root.rstrip("/") + "/" + n) if root != "/" else "/" + n


def fs_region(path: Path, fd: int, board: Board, size: int) -> tuple[int, int]:
    """(start, end) of the filesystem the firmware on this flash mounts.

    Blank partition-table sector (nothing flashed yet): the board's fs_start to the end of flash.
    A table that does not parse: a real ESP32's second-stage bootloader stops there and the
    board never runs MicroPython, so FlashError. Otherwise the rule MicroPython >= 1.26 applies
    at boot, the same one image.check_firmware builds the filesystem for."""
    # read_partition_table takes a combined firmware file (flash offset - firmware_offset)
    head = os.pread(fd, board.partition_table_offset - board.firmware_offset + PART_TABLE_MAX, board.firmware_offset)
    table = head[board.partition_table_offset - board.firmware_offset :]
    if table[:2] == b"\xff\xff":
        return board.fs_start, size
    try:
        parts = read_partition_table(head, board)
    except FirmwareError as e:
        raise FlashError(
            f"{path}: no valid partition table at 0x{board.partition_table_offset:x} ({e}): a real board would not boot",
            hint="write a good image with fleetpin provision, or delete the file for a blank flash",
        ) from None
    start, end = fs_bounds(parts, size)
    if end > size or start % board.fs_block_size or end % board.fs_block_size or end - start < 2 * board.fs_block_size:
        raise FlashError(
            f"{path}: the firmware's partition table leaves no usable filesystem (0x{start:x}-0x{end:x} on {size // MIB} MB)",
            hint="the firmware was built for a bigger flash; provision an image for this flash size",
        )
    return start, end


def blank_image(path: Path, size: int) -> None:
    """An erased flash chip: every byte 0xFF. Written to a temp file and renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        chunk = b"\xff" * MIB
        for _ in range(size // MIB):
            f.write(chunk)
    os.replace(tmp, path)


