"""fleetpin provision against esp32-mock-bootloader on ptys, with the real esptool: several
stations at once, each failure recorded with its reason while the others finish."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakefirmware import BUNDLE, SIGNERS, MockBoard, make_firmware

from fleetpin import cli
from fleetpin.line.boards import MIB, get_board
from fleetpin.line.image import LoadedImage, build_image, verify_image
from fleetpin.line.provision import (
    RESULT_FAILED,
    RESULT_OK,
    RESULT_SAME,
    ConfirmFailed,
    ProvisionOptions,
    Station,
    agent_confirm,
    provision,
)
from fleetpin.line.registry import Registry


def _image(out: Path, device_dir: Path, flash_mb: int = 4, **fw: Any) -> LoadedImage:
    b = get_board("esp32")
    build_image(b, make_firmware(b.chip, b.firmware_offset, **fw), BUNDLE, SIGNERS, flash_mb * MIB, out, device_dir)
    return verify_image(out)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, device_dir: Path) -> LoadedImage:
    return _image(tmp_path_factory.mktemp("img"), device_dir)


@pytest.fixture(scope="module")
def slow_image(tmp_path_factory: pytest.TempPathFactory, device_dir: Path) -> LoadedImage:
    """An app of 1 MB random bytes: incompressible, so writing it takes long enough to unplug."""
    return _image(tmp_path_factory.mktemp("slow"), device_dir, app_payload=random.Random(1).randbytes(1024 * 1024))


@pytest.fixture
def boards() -> Iterator[Any]:
    started: list[MockBoard] = []

    def start(chip: str = "esp32") -> MockBoard:
        b = MockBoard(chip).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


def opts(**kw: Any) -> ProvisionOptions:
    return ProvisionOptions(**({"operator": "tester", "retries": 1, "backoff": 0.05} | kw))


def esptool_verify(port: str, image: LoadedImage) -> subprocess.CompletedProcess[str]:
    """An independent read-back: esptool verify-flash compares every region's MD5 on the chip."""
    args = [a for r in image.regions for a in (hex(r["offset"]), str(image.directory / r["file"]))]
    return subprocess.run([sys.executable, "-m", "esptool", "--chip", "esp32", "--port", port, "verify-flash", *args], capture_output=True, text=True, timeout=120)


def test_several_stations_at_once(tmp_path: Path, image: LoadedImage, boards: Any) -> None:
    mocks = [boards() for _ in range(3)]
    reg = Registry(tmp_path / "reg.sqlite")
    confirmed: list[tuple[str, str]] = []
    stations = [Station.parse(f"slot{i}={m.port}") for i, m in enumerate(mocks)]
    results = provision(stations, image, opts(confirm=lambda p, d: confirmed.append((p, d))), reg)
    assert [r.result for r in results] == [RESULT_OK] * 3, [r.error for r in results]
    assert [r.mac for r in results] == [m.mac for m in mocks]  # each board's own MAC
    assert all(r.regions == {"firmware.bin": "written", "fs.bin": "written"} for r in results)
    assert sorted(confirmed) == sorted((m.port, image.bundle_sha256) for m in mocks)
    # they ran in parallel: every session overlaps every other
    assert max(r.started for r in results) < min(r.ended for r in results)
    for m in mocks:
        check = esptool_verify(m.port, image)
        assert check.returncode == 0 and check.stdout.count("Verification successful") == 2, check.stdout[-500:]
    rows = reg.attempts()
    assert sorted((a.station, a.port, a.result, a.operator, a.image_id, a.mac) for a in rows) == [
        (f"slot{i}", m.port, RESULT_OK, "tester", image.image_id, m.mac) for i, m in enumerate(mocks)
    ]
    assert all(a.bundle_sha256 == image.bundle_sha256 and a.ended >= a.started and a.error is None for a in rows)


def test_failures_are_recorded_with_their_reason_and_the_others_finish(tmp_path: Path, slow_image: LoadedImage, boards: Any) -> None:
    good, wrong_chip, unplugged, silent = boards(), boards("esp32c3"), boards(), boards()
    reg = Registry(tmp_path / "reg.sqlite")

    def events(station: Station, event: str, detail: dict[str, Any]) -> None:
        if station.port == unplugged.port and event == "progress" and detail["region"] == "firmware.bin":
            unplugged.stop()  # pulled out mid-write

    def confirm(port: str, digest: str) -> None:
        if port == silent.port:  # the mock has no agent behind it: nothing ever answers
            agent_confirm(port, digest, timeout=1.5)

    stations = [Station(n, b.port) for n, b in (("good", good), ("wrong", wrong_chip), ("unplugged", unplugged), ("silent", silent))]
    results = {r.station: r for r in provision(stations, slow_image, opts(confirm=confirm), reg, events=events)}
    assert results["good"].result == RESULT_OK
    assert results["wrong"].result == RESULT_FAILED
    assert results["wrong"].error == "wrong chip: the board is an ESP32-C3, the image is for ESP32 (esp32)"
    assert results["wrong"].attempts == 1  # a refusal is not retried
    assert results["unplugged"].result == RESULT_FAILED
    assert (results["unplugged"].error or "").startswith("serial link lost while writing firmware.bin")
    # retried, and the port stayed gone (its name may even have been reused by a new pty by then)
    assert "then after" in (results["unplugged"].error or "") and results["unplugged"].attempts >= 2
    assert results["silent"].result == RESULT_FAILED
    assert "agent not answering" in (results["silent"].error or "")
    rows = {a.station: a for a in reg.attempts()}
    assert {s: (a.result, a.error) for s, a in rows.items()} == {s: (r.result, r.error) for s, r in results.items()}
    # esptool refuses the wrong chip before it reads the MAC
    assert rows["good"].mac == good.mac and rows["wrong"].mac is None


def test_flash_too_small_is_refused_before_writing(tmp_path: Path, device_dir: Path, boards: Any) -> None:
    big = _image(tmp_path / "8mb", device_dir, flash_mb=8)
    m = boards()  # the mock's flash is 4 MB
    [r] = provision([Station("s", m.port)], big, opts(), Registry(tmp_path / "r.sqlite"))
    assert r.result == RESULT_FAILED and r.error == "flash too small: the board has 4MB, the image needs 8MB"
    assert r.regions == {}


def test_a_board_holding_the_image_is_recognised_and_not_reflashed(tmp_path: Path, image: LoadedImage, boards: Any) -> None:
    m = boards()
    reg = Registry(tmp_path / "r.sqlite")
    [first] = provision([Station("s", m.port)], image, opts(), reg)
    [again] = provision([Station("s", m.port)], image, opts(), reg)
    assert (first.result, again.result) == (RESULT_OK, RESULT_SAME)
    assert again.regions == {"firmware.bin": "skipped", "fs.bin": "skipped"}
    [forced] = provision([Station("s", m.port)], image, opts(force=True), reg)
    assert forced.result == RESULT_OK and forced.regions == {"firmware.bin": "written", "fs.bin": "written"}
    assert [a.result for a in reg.attempts()] == [RESULT_OK, RESULT_SAME, RESULT_OK]


def test_a_transient_serial_error_is_retried_with_backoff(tmp_path: Path, image: LoadedImage, boards: Any) -> None:
    link = tmp_path / "ttyFIXTURE"  # the station's port appears only after the first attempt failed
    attempts: list[float] = []

    def events(station: Station, event: str, detail: dict[str, Any]) -> None:
        if event == "attempt":
            attempts.append(time.monotonic())
        if event == "error" and detail["attempt"] == 1:
            assert detail["transient"]
            link.symlink_to(boards().port)

    [r] = provision([Station("s", str(link))], image, opts(retries=2, backoff=0.3), Registry(tmp_path / "r.sqlite"), events=events)
    assert r.result == RESULT_OK and r.attempts == 2
    assert attempts[1] - attempts[0] >= 0.3


# ---- the agent check, against a fake agent speaking pinagent's protocol on a pty -----------


class FakeAgent:
    """pinagent's own device-side Service and DeviceLink behind a pty, answering IDENTIFY."""

    def __init__(self, bundle_sha256: str, announce_late: bool = False) -> None:
        from pinagent.link import DeviceLink
        from pinagent.service import Handler, Service

        class H(Handler):
            def identify(self) -> dict[str, Any]:
                return {"device_id": "fake", "bundle_sha256": bundle_sha256}

        self.link = DeviceLink(Service(H()).dispatch)
        # a board just out of reset: its start-up announcement crosses the host's first request
        self._announce = announce_late
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave = slave
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import select

        while not self._stop:
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    return
                if self._announce:
                    self._announce = False
                    os.write(self.master, bytes(self.link.announce()))
                out = self.link.receive_data(data)
                if out:
                    os.write(self.master, out)

    def close(self) -> None:
        self._stop = True
        self._t.join()
        os.close(self.master)
        os.close(self._slave)


def test_default_confirm_asks_the_agent_identify() -> None:
    agent = FakeAgent("ab" * 32)
    try:
        agent_confirm(agent.port, "ab" * 32, timeout=5)
        with pytest.raises(ConfirmFailed, match="agent runs bundle abababab"):
            agent_confirm(agent.port, "cd" * 32, timeout=5)
    finally:
        agent.close()


def test_default_confirm_asks_again_when_the_board_announces_its_reset() -> None:
    agent = FakeAgent("ab" * 32, announce_late=True)
    try:
        info = agent_confirm(agent.port, "ab" * 32, timeout=5)
        assert (info["device_id"], info["bundle_sha256"]) == ("fake", "ab" * 32)
        assert not agent._announce  # the announcement was sent (and survived)
    finally:
        agent.close()


def test_default_confirm_reports_a_silent_port_and_a_missing_one(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        t0 = time.monotonic()
        with pytest.raises(ConfirmFailed, match="agent not answering"):
            agent_confirm(os.ttyname(slave), "ab" * 32, timeout=1)
        assert time.monotonic() - t0 < 5
    finally:
        os.close(master)
        os.close(slave)
    with pytest.raises(ConfirmFailed, match="cannot open"):
        agent_confirm(str(tmp_path / "nothing"), "ab" * 32, timeout=1)


# ---- the command -----------------------------------------------------------------------------


def test_cli_json_summary_registry_and_exit_code(tmp_path: Path, image: LoadedImage, boards: Any, capsys: pytest.CaptureFixture[str]) -> None:
    good, wrong = boards(), boards("esp32c3")
    reg = tmp_path / "reg.sqlite"
    base = ["provision", "--board", "esp32", "--image", str(image.directory), "--registry", str(reg), "--operator", "ana", "--no-confirm", "--retries", "0"]
    assert cli.main([*base, "--port", good.port, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["image_id"] == image.image_id and out["results"][0]["result"] == RESULT_OK
    first = out["results"][0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["started"]) and first["ended"] >= first["started"]
    assert first["seconds"] > 0
    assert cli.main([*base, "--port", f"a={good.port}", "--port", f"b={wrong.port}", "--jobs", "2", "--json"]) == 1
    res = {r["station"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert res["a"]["result"] == RESULT_SAME and res["b"]["result"] == RESULT_FAILED and "wrong chip" in res["b"]["error"]
    assert cli.main([*base, "--port", good.port]) == 0  # table output
    assert "0 provisioned, 1 already-provisioned, 0 failed" in capsys.readouterr().out
    assert cli.main(["provision", "--board", "esp32c3", "--image", str(image.directory), "--port", good.port, "--registry", str(reg)]) == 2
    assert cli.main(["registry", "list", "--registry", str(reg), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["station"], r["result"], r["operator"]) for r in rows][-3:] in (
        [("a", RESULT_SAME, "ana"), ("b", RESULT_FAILED, "ana"), (good.port, RESULT_SAME, "ana")],
        [("b", RESULT_FAILED, "ana"), ("a", RESULT_SAME, "ana"), (good.port, RESULT_SAME, "ana")],
    )


# ---- the registry's claim ----------------------------------------------------------------------


def test_a_station_keeps_its_claim_while_it_writes_and_stops_when_it_loses_it(tmp_path: Path, image: LoadedImage, boards: Any) -> None:
    import sqlalchemy as sa

    from fleetpin.line.registry import BUSY, CLAIMED, CONFIRMED

    reg = Registry(tmp_path / "r.sqlite")
    slow, stolen = boards(), boards()
    seen: dict[str, Any] = {}

    def events(station: Station, event: str, detail: dict[str, Any]) -> None:
        if event != "progress" or station.name in seen:
            return
        if station.name == "slow":  # a write far longer than the lease: the station renews its claim meanwhile
            time.sleep(1.5)
            seen["slow"] = reg.claim(slow.mac, station="other:/dev/ttyUSB9", image_id=image.image_id,
                                     bundle_sha256=image.bundle_sha256, lease=0.5)
        else:  # another station took the board over (as after this one's lease ran out)
            with reg.engine.begin() as conn:
                conn.execute(sa.text("UPDATE boards SET token = 'theirs', station = 'other:/dev/ttyUSB9' WHERE mac = :m"),
                             {"m": stolen.mac})
            seen["stolen"] = True
            time.sleep(0.5)  # the next renewal finds out

    results = provision([Station("slow", slow.port), Station("stolen", stolen.port)], image, opts(lease=0.5), reg, events=events)
    r = {x.station: x for x in results}
    assert r["slow"].result == RESULT_OK and seen["slow"].outcome == BUSY and seen["slow"].holder.endswith(slow.port)
    assert reg.board(slow.mac).state == CONFIRMED  # type: ignore[union-attr]
    assert r["stolen"].result == RESULT_FAILED and (r["stolen"].error or "").startswith("claim lost:")
    assert "fs.bin" not in r["stolen"].regions  # it stopped writing
    row = reg.board(stolen.mac)
    assert row is not None and (row.state, row.token, row.station) == (CLAIMED, "theirs", "other:/dev/ttyUSB9")  # left to its holder
    assert [a.result for a in reg.attempts(stolen.mac)] == [RESULT_FAILED]
