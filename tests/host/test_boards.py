"""Board definitions: the shipped files load and say what DESIGN.md says; bad files are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetpin import cli
from fleetpin.errors import UsageError
from fleetpin.line.boards import MIB, flash_size_label, get_board, load_boards, parse_flash_size


def test_shipped_boards_match_the_platform_facts() -> None:
    boards = load_boards()
    assert set(boards) == {"esp32", "esp32s3", "esp32c3"}
    assert boards["esp32"].firmware_offset == 0x1000
    assert boards["esp32s3"].firmware_offset == boards["esp32c3"].firmware_offset == 0
    assert boards["esp32c3"].mpy_arch == "rv32imc" and boards["esp32"].mpy_arch == "xtensawin"
    for b in boards.values():
        assert (b.fs_block_size, b.fs_read_size, b.fs_prog_size, b.fs_lookahead_size, b.fs_block_cycles) == (4096, 32, 32, 32, 100)
        assert b.partition_table_offset == 0x8000


def test_unknown_board_names_the_known_ones() -> None:
    with pytest.raises(UsageError) as e:
        get_board("esp8266")
    assert "esp32c3" in (e.value.hint or "")


def _write(d: Path, text: str) -> Path:
    d.mkdir(exist_ok=True)
    (d / "b.toml").write_text(text)
    return d


GOOD = (Path(__file__).parents[2] / "boards" / "esp32.toml").read_text()


@pytest.mark.parametrize(
    "change, why",
    [
        (('chip = "esp32"', 'chip = "esp8266"'), "chip"),
        (("fs_start = 0x200000", "fs_start = 0x200100"), "multiple of fs_block_size"),
        (("fs_start = 0x200000", "fs_start = 0x400000"), "beyond the smallest flash size"),
        (('mpy_arch = "xtensawin"', 'mpy_arch = "z80"'), "mpy_arch"),
        (("flash_sizes = [4, 8, 16]", "flash_sizes = []"), "flash_sizes"),
        (("max_baud = 921600", 'max_baud = "fast"'), "max_baud"),
        (("name = ", "nom = "), "name"),
    ],
)
def test_bad_board_files_are_refused_with_the_field(tmp_path: Path, change: tuple[str, str], why: str) -> None:
    with pytest.raises(UsageError) as e:
        load_boards(_write(tmp_path / "boards", GOOD.replace(*change)))
    assert why in str(e.value)


def test_unparsable_board_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as e:
        load_boards(_write(tmp_path / "boards", GOOD + "\n= broken\n"))
    assert "b.toml" in str(e.value)


def test_flash_sizes_parse_like_esptool() -> None:
    assert parse_flash_size("4MB") == parse_flash_size("4") == parse_flash_size("4MiB") == 4 * MIB
    assert flash_size_label(16 * MIB) == "16MB"
    for bad in ("0MB", "4GB", "", "four"):
        with pytest.raises(UsageError):
            parse_flash_size(bad)


def test_boards_command_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["boards", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {b["name"]: b["chip"] for b in data} == {"esp32": "esp32", "esp32c3": "esp32c3", "esp32s3": "esp32s3"}
    assert cli.main(["boards"]) == 0
    out = capsys.readouterr().out
    assert "0x1000" in out and "rv32imc" in out


def test_chip_ids_come_from_esptools_own_definitions() -> None:
    """No copy of the chip table: the image header ids are esptool's (read in its own process)."""
    from fleetpin.line.chips import image_chip_ids

    ids = image_chip_ids()
    assert ids["esp32"] == 0 and ids["esp32s3"] == 9 and ids["esp32c3"] == 5
    for name in ("esp32", "esp32s3", "esp32c3"):
        assert get_board(name).chip_id == ids[get_board(name).chip]
