"""Board definitions: one TOML file per board under boards/ (see boards/README.md). Everything
the production line must not guess (chip, firmware offset, flash sizes, filesystem geometry,
mpy-cross arch, baud rates) is read from there and checked once, here."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fleetpin.errors import UsageError
from fleetpin.line.chips import image_chip_id, image_chip_ids
from fleetpin.resources import shipped_dir

MIB = 1024 * 1024
MPY_ARCHS = {"xtensawin", "rv32imc", "xtensa", "armv6m", "armv7m", "x64", "x86"}
BOARDS_ENV = "FLEETPIN_BOARDS"


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    chip: str
    firmware_offset: int
    partition_table_offset: int
    flash_sizes: tuple[int, ...]  # MiB
    fs_start: int
    fs_block_size: int
    fs_read_size: int
    fs_prog_size: int
    fs_lookahead_size: int
    fs_block_cycles: int
    mpy_arch: str
    default_baud: int
    max_baud: int

    @property
    def chip_id(self) -> int:
        return image_chip_id(self.chip)

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["flash_sizes"] = list(self.flash_sizes)
        return d


_INT_FIELDS = (
    "firmware_offset",
    "partition_table_offset",
    "fs_start",
    "fs_block_size",
    "fs_read_size",
    "fs_prog_size",
    "fs_lookahead_size",
    "fs_block_cycles",
    "default_baud",
    "max_baud",
)


def default_boards_dir() -> Path:
    """$FLEETPIN_BOARDS, else the board definitions that ship with fleetpin."""
    env = os.environ.get(BOARDS_ENV)
    if env:
        return Path(env)
    return shipped_dir("boards")


def _board_from(data: dict[str, Any], source: Path) -> Board:
    def bad(why: str) -> UsageError:
        return UsageError(f"{source}: {why}", hint="fix the board file (fields: boards/README.md)")

    try:
        for f in ("name", "description", "chip", "mpy_arch"):
            if not isinstance(data.get(f), str) or not data[f]:
                raise bad(f"{f} must be a non-empty string")
        for f in _INT_FIELDS:
            if not isinstance(data.get(f), int) or isinstance(data[f], bool) or data[f] < 0:
                raise bad(f"{f} must be a non-negative integer")
        sizes = data.get("flash_sizes")
        if not isinstance(sizes, list) or not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise bad("flash_sizes must be a non-empty list of MiB")
        if data["chip"] not in image_chip_ids():
            raise bad(f"chip {data['chip']!r} is not a chip esptool knows ({', '.join(sorted(image_chip_ids()))})")
        if data["mpy_arch"] not in MPY_ARCHS:
            raise bad(f"mpy_arch {data['mpy_arch']!r} is not an mpy-cross -march value")
        if data["fs_block_size"] == 0 or data["fs_start"] % data["fs_block_size"]:
            raise bad("fs_start must be a multiple of fs_block_size")
        if data["fs_start"] >= min(sizes) * MIB:
            raise bad("fs_start lies beyond the smallest flash size")
        fields = {f: data[f] for f in ("name", "description", "chip", "mpy_arch", *_INT_FIELDS)}
        return Board(flash_sizes=tuple(sorted(sizes)), **fields)
    except KeyError as e:  # pragma: no cover - every key is checked above
        raise bad(f"missing field {e}") from None


def load_boards(boards_dir: Path | None = None) -> dict[str, Board]:
    d = boards_dir or default_boards_dir()
    files = sorted(d.glob("*.toml")) if d.is_dir() else []
    if not files:
        raise UsageError(f"no board files in {d}", hint=f"point ${BOARDS_ENV} at a boards/ directory")
    boards: dict[str, Board] = {}
    for path in files:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: {e}", hint="fix the board file") from None
        b = _board_from(data, path)
        if b.name in boards:
            raise UsageError(f"{path}: board {b.name!r} is defined twice", hint="give each board a unique name")
        boards[b.name] = b
    return boards


def get_board(name: str, boards_dir: Path | None = None) -> Board:
    boards = load_boards(boards_dir)
    if name not in boards:
        raise UsageError(f"unknown board {name!r}", hint=f"one of: {', '.join(sorted(boards))} (fleetpin boards)")
    return boards[name]


def parse_flash_size(text: str) -> int:
    """'4MB', '4MiB', '4M' or '4' (MiB, as esptool and the board files count) -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*(MB|MIB|M)?\s*", text.upper())
    if not m or int(m.group(1)) == 0:
        raise UsageError(f"bad flash size {text!r}", hint="give it in MiB, like 4MB or 8MB")
    return int(m.group(1)) * MIB


def flash_size_label(size: int) -> str:
    """Bytes -> esptool's spelling ('4MB')."""
    return f"{size // MIB}MB" if size % MIB == 0 else f"{size}B"
