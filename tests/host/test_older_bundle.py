"""An image whose bundle is older than the newest bundle the registry has seen for that fleet is
refused by `image build` and `provision` unless forced (--allow-older-bundle): a board re-imaged
with an old bundle would accept every bundle since, retired ones included, from anyone with a
cable. The registry sees a bundle when a board is provisioned with it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakefirmware import SIGNERS, MockBoard, make_firmware

from fleetpin import cli
from fleetpin.line.boards import MIB, get_board
from fleetpin.line.image import build_image
from fleetpin.line.registry import Registry

REPO = Path(__file__).resolve().parents[2]
V1 = REPO / "tests/vectors/agent/v1.bin"  # acme-sensors v1, signed by signers_prod.json
V2 = REPO / "tests/vectors/agent/v2.bin"  # acme-sensors v2
FLEET = "acme-sensors"


@pytest.fixture
def board() -> Iterator[MockBoard]:
    b = MockBoard("esp32").start()
    yield b
    b.stop()


def image_of(bundle: Path, out: Path, device_dir: Path) -> Path:
    b = get_board("esp32")
    build_image(b, make_firmware(b.chip, b.firmware_offset), bundle.read_bytes(), SIGNERS, 4 * MIB, out, device_dir)
    return out


def provision(image: Path, port: str, registry: Path, *more: str) -> int:
    return cli.main(["provision", "--board", "esp32", "--image", str(image), "--port", port, "--registry",
                     str(registry), "--operator", "ana", "--no-confirm", "--retries", "0", "--json", *more])


def image_build(bundle: Path, out: Path, device_dir: Path, tmp: Path, *more: str) -> int:
    fw = tmp / "firmware.bin"
    fw.write_bytes(make_firmware())
    signers = tmp / "signers.json"
    signers.write_bytes(SIGNERS)
    return cli.main(["image", "build", "--board", "esp32", "--firmware", str(fw), "--bundle", str(bundle),
                     "--signers", str(signers), "-o", str(out), "--device-dir", str(device_dir), *more])


def test_an_older_bundle_is_refused_once_the_registry_has_seen_a_newer_one(
        tmp_path: Path, device_dir: Path, board: MockBoard, capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "reg.sqlite"
    # the line provisions a board with v2: the registry now knows v2 for the fleet
    assert provision(image_of(V2, tmp_path / "img-v2", device_dir), board.port, reg) == 0
    capsys.readouterr()
    assert Registry(reg).newest_bundle(FLEET) == (2, hashlib.sha256(V2.read_bytes()).hexdigest())

    # building an image with v1 against that registry: refused, nothing written
    out = tmp_path / "img-v1"
    assert image_build(V1, out, device_dir, tmp_path, "--registry", str(reg)) == 1
    err = capsys.readouterr().err
    assert "v1" in err and "v2" in err and FLEET in err and "--allow-older-bundle" in err
    assert not out.exists()
    # provisioning an image with v1 (built elsewhere): refused before any board is touched
    old_image = image_of(V1, tmp_path / "img-v1-elsewhere", device_dir)
    attempts = len(Registry(reg).attempts())
    assert provision(old_image, board.port, reg) == 1
    err = capsys.readouterr().err
    assert "--allow-older-bundle" in err and len(Registry(reg).attempts()) == attempts

    # forced: both go ahead (a deliberate downgrade, e.g. a fleet whose v2 was never shipped)
    assert image_build(V1, out, device_dir, tmp_path, "--registry", str(reg), "--allow-older-bundle") == 0
    capsys.readouterr()
    assert provision(old_image, board.port, reg, "--allow-older-bundle") == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert results[0]["result"] == "provisioned"
    assert Registry(reg).newest_bundle(FLEET) == (2, hashlib.sha256(V2.read_bytes()).hexdigest())


def test_the_same_or_a_newer_bundle_and_a_new_registry_pass(tmp_path: Path, device_dir: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "reg.sqlite"
    assert image_build(V1, tmp_path / "a", device_dir, tmp_path, "--registry", str(reg)) == 0
    assert not reg.exists()  # building an image never creates a registry
    r = Registry(reg)
    r.note_bundle(FLEET, 1, hashlib.sha256(V1.read_bytes()).hexdigest(), 0.0)
    assert image_build(V1, tmp_path / "b", device_dir, tmp_path, "--registry", str(reg)) == 0
    assert image_build(V2, tmp_path / "c", device_dir, tmp_path, "--registry", str(reg)) == 0
    r.note_bundle("other-fleet", 9, "ab" * 32, 0.0)  # another fleet's bundles do not count
    assert image_build(V1, tmp_path / "d", device_dir, tmp_path, "--registry", str(reg)) == 0
    assert r.newest_bundle(FLEET) == (1, hashlib.sha256(V1.read_bytes()).hexdigest())
    assert r.newest_bundle("nobody") is None


def test_the_default_registry_is_consulted(tmp_path: Path, device_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Without --registry, image build reads the line's default registry file if it is there."""
    monkeypatch.chdir(tmp_path)
    Registry(Path("fleetpin-registry.sqlite")).note_bundle(FLEET, 2, "cd" * 32, 0.0)
    assert image_build(V1, tmp_path / "img", device_dir, tmp_path) == 1
    assert "older" in capsys.readouterr().err
