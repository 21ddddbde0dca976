"""fleetpin image build/verify: the filesystem lands where the firmware's own partition table
puts it, with the geometry MicroPython mounts, and images that would not boot are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import littlefs
import pytest
from fakefirmware import BUNDLE, MICROPYTHON_PARTITIONS, SIGNERS, make_firmware

from fleetpin import cli
from fleetpin.agent_files import board_files, read_manifest
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.line.boards import MIB, get_board
from fleetpin.line.image import (
    FirmwareError,
    ImageError,
    build_image,
    check_firmware,
    read_partition_table,
    verify_image,
)
from pinagent import store

REPO = Path(__file__).resolve().parents[2]


def build(tmp: Path, device_dir: Path, board: str = "esp32", flash_mb: int = 4, **fw: object) -> tuple[dict, Path]:
    b = get_board(board)
    firmware = make_firmware(b.chip, b.firmware_offset, **fw)  # type: ignore[arg-type]
    out = tmp / f"img-{board}-{flash_mb}"
    return build_image(b, firmware, BUNDLE, SIGNERS, flash_mb * MIB, out, device_dir), out


def mount(data: bytes) -> littlefs.LittleFS:
    return littlefs.LittleFS(
        context=littlefs.UserContext(buffer=bytearray(data)), block_size=4096, read_size=32, prog_size=32, lookahead_size=32, block_cycles=100, block_count=0
    )


@pytest.mark.parametrize("board, flash_mb", [("esp32", 4), ("esp32s3", 8), ("esp32c3", 4)])
def test_image_mounts_where_and_how_the_firmware_expects(tmp_path: Path, device_dir: Path, board: str, flash_mb: int) -> None:
    m, out = build(tmp_path, device_dir, board, flash_mb)
    b = get_board(board)
    fw_region, fs_region = m["regions"]
    assert fw_region["offset"] == b.firmware_offset
    assert fs_region["offset"] == 0x200000  # end of factory in the firmware's partition table
    assert fs_region["size"] == flash_mb * MIB - 0x200000
    fs = mount((out / "fs.bin").read_bytes())
    assert fs.block_count == fs_region["size"] // 4096
    assert json.loads(fs.open("/fleetpin/config.json", "rb").read()) == {"fleet": "acme-sensors", "board": board, "image_id": m["image_id"]}
    # the installed-bundle slot the agent boots from: the verifying signer set, the bundle, a digest
    assert store.decode_slot(fs.open("/fleetpin/bundle.bin", "rb").read())[:2] == (SIGNERS, BUNDLE)
    assert fs.open("/fleetpin/signers.bin", "rb").read() == SIGNERS
    assert fs.open("/main.py", "rb").read() == (device_dir / "main.py").read_bytes()  # as source, at the root
    mods = set(fs.listdir("/lib/pinagent"))
    assert {"bundle.mpy", "link.mpy", "service.mpy", "store.mpy", "__init__.mpy", "io"} <= mods
    assert "client.mpy" not in mods and "link_host.mpy" not in mods  # host-only modules stay home
    assert not any(n.endswith(".py") for n in mods)
    mpy = fs.open("/lib/pinagent/store.mpy", "rb").read()
    # .mpy v6 (MicroPython >= 1.22); bytecode-only modules carry no arch in the header
    assert mpy[0:2] == b"M\x06"
    # the bootloader header says the flash size the filesystem was built for, with a valid SHA
    size_code = {4: 0x20, 8: 0x30}[flash_mb]
    fw = (out / "firmware.bin").read_bytes()
    assert fw[3] & 0xF0 == size_code
    boot = tmp_path / "boot.bin"
    boot.write_bytes(fw[:0x7000])
    info = subprocess.run([sys.executable, "-m", "esptool", "--chip", b.chip, "image-info", str(boot)], capture_output=True, text=True)
    assert "Validation hash" in info.stdout and "(valid)" in info.stdout.split("Validation hash")[1].splitlines()[0], info.stdout
    assert verify_image(out).image_id == m["image_id"]


def test_the_manifest_alone_decides_what_ships(tmp_path: Path) -> None:
    """MicroPython's manifest convention: package() ships a package's modules compiled under
    /lib, module() ships the entry point as source; a file the manifest does not name stays home."""
    (tmp_path / "pinagent" / "io").mkdir(parents=True)
    (tmp_path / "pinagent" / "core.py").write_text("x = 1\n")
    (tmp_path / "pinagent" / "io" / "flash.py").write_text("z = 3\n")
    (tmp_path / "main.py").write_text("import pinagent\n")
    (tmp_path / "tool.py").write_text("y = 2\n")
    (tmp_path / "manifest.py").write_text('metadata(version="1")\npackage("pinagent")\nmodule("main.py")\n')
    files = board_files("xtensawin", tmp_path)
    assert sorted(files) == ["/lib/pinagent/core.mpy", "/lib/pinagent/io/flash.mpy", "/main.py"]
    assert files["/main.py"] == b"import pinagent\n" and files["/lib/pinagent/core.mpy"][:1] == b"M"
    (tmp_path / "manifest.py").write_text('package("pinagent")\nfreeze("x")\n')
    with pytest.raises(FleetpinError, match="only package"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.py").unlink()
    with pytest.raises(FleetpinError, match="manifest.py does not exist"):
        read_manifest(tmp_path)


def test_the_shipped_manifest_ships_the_agent_and_nothing_host_side() -> None:
    names = {f.name for f in read_manifest()}
    assert {"main.py", "pinagent/agent.py", "pinagent/io/tls.py"} <= names
    assert not any("client" in n or "link_host" in n for n in names)


def test_same_inputs_give_the_same_image(tmp_path: Path, device_dir: Path) -> None:
    m1, out1 = build(tmp_path / "a", device_dir)
    m2, out2 = build(tmp_path / "b", device_dir)
    assert m1["image_id"] == m2["image_id"]
    assert (out1 / "fs.bin").read_bytes() == (out2 / "fs.bin").read_bytes()


def test_filesystem_start_comes_from_the_firmwares_partition_table(tmp_path: Path, device_dir: Path) -> None:
    parts = [*MICROPYTHON_PARTITIONS[:2], ("factory", 0, 0, 0x10000, 0x2F0000)]
    m, out = build(tmp_path, device_dir, partitions=parts)
    assert m["regions"][1]["offset"] == 0x300000 and m["regions"][1]["size"] == 0x100000
    assert mount((out / "fs.bin").read_bytes()).block_count == 256
    # a table that declares vfs itself is used as it is
    parts = [*MICROPYTHON_PARTITIONS, ("vfs", 1, 0x81, 0x200000, 0x180000)]
    m, _ = build(tmp_path / "vfs", device_dir, partitions=parts)
    assert (m["regions"][1]["offset"], m["regions"][1]["size"]) == (0x200000, 0x180000)


@pytest.mark.parametrize(
    "kwargs, flash_mb, message",
    [
        (dict(app_chip="esp32c3"), 4, "app is built for chip id 5"),
        (dict(bootloader_chip="esp32s3"), 4, "bootloader is built for chip id 9"),
        (dict(app_size=0x200000), 4, "its partition 'factory' holds"),
        (dict(partitions=[*MICROPYTHON_PARTITIONS, ("big", 1, 0x81, 0x200000, 0x300000)]), 4, "beyond 4MB"),
        (dict(partitions=[*MICROPYTHON_PARTITIONS, ("fat", 1, 0x81, 0x200000, 0x1FC000)]), 4, "blocks left"),
        (dict(partitions=[("nvs", 1, 2, 0x9000, 0x8000), ("factory", 0, 0, 0x10000, 0x1F0000)]), 4, "overlap"),
    ],
)
def test_firmware_that_would_not_boot_is_refused(tmp_path: Path, device_dir: Path, kwargs: dict, flash_mb: int, message: str) -> None:
    with pytest.raises(FirmwareError) as e:
        build(tmp_path, device_dir, flash_mb=flash_mb, **kwargs)
    assert message in str(e.value)
    assert e.value.hint
    assert not (tmp_path / f"img-esp32-{flash_mb}").exists()  # nothing written


def test_partition_table_is_read_and_checked() -> None:
    b = get_board("esp32")
    fw = make_firmware()
    assert [p.label for p in read_partition_table(fw, b)] == ["nvs", "phy_init", "factory"]
    broken = bytearray(fw)
    broken[0x7000 + 0x40 + 4] ^= 1  # inside the factory entry: MD5 entry no longer matches
    with pytest.raises(FirmwareError, match="MD5"):
        read_partition_table(bytes(broken), b)
    with pytest.raises(FirmwareError, match="no partition table"):
        read_partition_table(fw[:0x7000] + b"\xff" * 0x1000, b)
    with pytest.raises(FirmwareError, match="too short"):
        read_partition_table(fw[:0x100], b)
    # an S3 firmware's table is at file offset 0x8000, not 0x7000: given to the esp32 it is refused
    with pytest.raises(FirmwareError):
        check_firmware(make_firmware("esp32s3", 0), b, 4 * MIB)


def test_flash_size_must_be_one_the_board_has(tmp_path: Path, device_dir: Path) -> None:
    with pytest.raises(UsageError, match="does not come with 8MB"):
        build(tmp_path, device_dir, "esp32c3", 8)


def test_missing_main_py_says_what_to_do(tmp_path: Path) -> None:
    d = tmp_path / "device"
    d.mkdir()
    (d / "pinagent").symlink_to(REPO / "device" / "pinagent")
    (d / "manifest.py").write_text('package("pinagent")\nmodule("main.py")\n')
    with pytest.raises(FleetpinError, match=r"module\('main.py'\): no file"):
        build(tmp_path, d)
    (d / "manifest.py").unlink()
    with pytest.raises(FleetpinError) as e:
        build(tmp_path, d)
    assert "manifest.py does not exist" in str(e.value) and "device/" in (e.value.hint or "")


def test_a_bundle_that_does_not_parse_is_refused(tmp_path: Path, device_dir: Path) -> None:
    with pytest.raises(UsageError, match="bundle does not parse"):
        build_image(get_board("esp32"), make_firmware(), b"not a bundle", SIGNERS, 4 * MIB, tmp_path / "o", device_dir)


def _rewrite_region(out: Path, name: str, data: bytes) -> None:
    import hashlib

    (out / name).write_bytes(data)
    m = json.loads((out / "manifest.json").read_text())
    for r in m["regions"]:
        if r["file"] == name:
            r["size"], r["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (out / "manifest.json").write_text(json.dumps(m))


def test_verify_catches_altered_and_unmountable_images(tmp_path: Path, device_dir: Path) -> None:
    _, out = build(tmp_path, device_dir)
    fs = (out / "fs.bin").read_bytes()
    # a flipped bit
    (out / "fs.bin").write_bytes(fs[:100] + bytes([fs[100] ^ 1]) + fs[101:])
    with pytest.raises(ImageError, match="fs.bin does not match"):
        verify_image(out)
    # right size and hash in the manifest, but built for a different block count: would not mount
    wrong = littlefs.LittleFS(block_size=4096, block_count=256, read_size=32, prog_size=32, lookahead_size=32, block_cycles=100)
    _rewrite_region(out, "fs.bin", bytes(wrong.context.buffer) + b"\xff" * (len(fs) - 256 * 4096))
    with pytest.raises(ImageError, match="256 blocks, the partition 512"):
        verify_image(out)
    # blank: does not mount at all
    _rewrite_region(out, "fs.bin", b"\xff" * len(fs))
    with pytest.raises(ImageError, match="does not mount"):
        verify_image(out)
    # an edited manifest
    _rewrite_region(out, "fs.bin", fs)
    verify_image(out)
    m = json.loads((out / "manifest.json").read_text())
    m["content"]["fleet"] = "other"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ImageError, match="does not hash to its image id"):
        verify_image(out)
    (out / "manifest.json").write_text("{}")
    with pytest.raises(ImageError, match="not a fleetpin image manifest"):
        verify_image(out)


def test_cli_build_and_verify(tmp_path: Path, device_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fw = tmp_path / "firmware.bin"
    fw.write_bytes(make_firmware())
    bundle, signers = REPO / "tests/vectors/bundle/good.bin", REPO / "tests/vectors/bundle/signers_prod.json"
    out = tmp_path / "img"
    args = ["image", "build", "--board", "esp32", "--firmware", str(fw), "--bundle", str(bundle), "--signers", str(signers)]
    assert cli.main([*args, "--flash-size", "4MB", "-o", str(out), "--device-dir", str(device_dir), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert cli.main(["image", "verify", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_id"] == m["image_id"]
    assert cli.main([*args, "--flash-size", "32MB", "-o", str(tmp_path / "x"), "--device-dir", str(device_dir)]) == 2
    assert "does not come with 32MB" in capsys.readouterr().err
    (out / "fs.bin").write_bytes(b"")
    assert cli.main(["image", "verify", str(out)]) == 1


def test_image_with_a_bundle_its_signers_do_not_verify_is_refused(tmp_path: Path) -> None:
    device_dir = tmp_path / "device"
    (device_dir / "pinagent").mkdir(parents=True)
    (device_dir / "main.py").write_text("pass\n")
    (device_dir / "manifest.py").write_text('package("pinagent")\nmodule("main.py")\n')
    other = REPO / "tests/vectors/bundle/signers_new.json"  # a valid signer set of other keys
    with pytest.raises(FleetpinError, match="does not verify the bundle"):
        build_image(get_board("esp32"), make_firmware(), BUNDLE, other.read_bytes(), 4 * MIB, tmp_path / "o", device_dir)
