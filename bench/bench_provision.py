"""Provisioning: fleetpin's time for 1 and for 4 stations at once, and for one station as a
ratio to plain esptool writing the same regions (target <= 1.1), all in one run.

Boards are esp32-mock-bootloader processes on ptys (tests/fakefirmware.MockBoard), each fresh
so every run writes a blank flash; the image is a fake but well-formed MicroPython firmware
plus the real agent filesystem (4 MB flash: 124 KB firmware + 2 MB LittleFS). fleetpin's
work includes what plain esptool's does not: a first esptool session that reads the board's MAC
so the registry can claim the board before anything is written (stations sharing a registry
never both write one board), the MD5 comparison that recognises an already provisioned board
(--skip-flashed), output parsing, and the registry's rows. On the mock a whole write takes well
under a second, so that extra session weighs far more than on a real board, whose write takes
seconds. No agent check (--no-confirm): there is no agent behind a mock.

Then the same with the confirm step, on virtual stations (fleetpin.sim.station): the mock ROM's
flash is a file, so after esptool each board is reset into the agent booted from that flash and
asked IDENTIFY on its new port; the extra time is the confirm step's cost. Medians of REPS runs.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fakefirmware import MockBoard, make_firmware  # noqa: E402

from fleetpin.line.boards import MIB, get_board  # noqa: E402
from fleetpin.line.image import build_image, verify_image  # noqa: E402
from fleetpin.line.provision import ProvisionOptions, Station, esptool_command, provision  # noqa: E402
from fleetpin.line.registry import Registry  # noqa: E402
from fleetpin.sim.station import VirtualStations  # noqa: E402

REPS = 5


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        dev = tmp / "device"
        dev.mkdir()
        (dev / "pinagent").symlink_to(REPO / "device" / "pinagent")
        main = REPO / "device" / "main.py"
        (dev / "main.py").write_bytes(main.read_bytes() if main.exists() else b"import pinagent\n")
        (dev / "manifest.py").write_bytes((REPO / "device" / "manifest.py").read_bytes())  # what ships
        board = get_board("esp32")
        bundle = (REPO / "tests/vectors/bundle/good.bin").read_bytes()
        signers = (REPO / "tests/vectors/bundle/signers_prod.json").read_bytes()
        build_image(board, make_firmware(), bundle, signers, 4 * MIB, tmp / "img", dev)
        image = verify_image(tmp / "img")
        opts = ProvisionOptions(operator="bench", retries=0)
        batches = iter(range(10**6))

        def registry() -> Registry:
            # A new batch of boards: a registry that knows none of them.
            return Registry(tmp / f"reg{next(batches)}.sqlite")

        def fleetpin(n: int) -> float:
            mocks = [MockBoard("esp32").start() for _ in range(n)]
            try:
                t0 = time.perf_counter()
                results = provision([Station(f"s{i}", m.port) for i, m in enumerate(mocks)], image, opts, registry())
                dt = time.perf_counter() - t0
            finally:
                for m in mocks:
                    m.stop()
            bad = [r.error for r in results if not r.ok]
            if bad:
                raise RuntimeError(f"provisioning failed: {bad}")
            return dt

        def virtual(n: int) -> float:
            with VirtualStations(n) as line:  # fresh flash files: every run writes a blank flash
                t0 = time.perf_counter()
                results = provision(line.fixture(), image, ProvisionOptions(operator="bench", retries=0, confirm=line.confirm()), registry())
                dt = time.perf_counter() - t0
            bad = [r.error for r in results if not r.ok]
            if bad:
                raise RuntimeError(f"virtual provisioning failed: {bad}")
            return dt

        def plain() -> float:
            with MockBoard("esp32") as m:
                cmd = esptool_command(ProvisionOptions(force=True), image, m.port)  # same session, no --skip-flashed
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                return time.perf_counter() - t0

        one, four, base, v_one, v_four = [], [], [], [], []
        for _ in range(REPS):  # interleaved so drift hits all alike
            base.append(plain())
            one.append(fleetpin(1))
            four.append(fleetpin(4))
            v_one.append(virtual(1))
            v_four.append(virtual(4))
        b, o, f = statistics.median(base), statistics.median(one), statistics.median(four)
        vo, vf = statistics.median(v_one), statistics.median(v_four)
        print(f"   plain esptool, 1 board:      {b:6.2f} s  (write-flash of the same 2 regions, MD5-verified)")
        print(f"   fleetpin provision, 1 board: {o:6.2f} s  ratio to plain esptool {o / b:.2f} (target <= 1.1 before the claim's MAC read)")
        print(f"   fleetpin provision, 4 boards:{f:6.2f} s  = {f / o:.2f} x one board ({4 * o / f:.1f} boards' work per board-time)")
        print("   with the agent check (virtual stations: flash, reset, boot from that flash, IDENTIFY):")
        print(f"     1 board:  {vo:6.2f} s  ratio to plain esptool {vo / b:.2f}; the check adds {vo - o:+.2f} s")
        print(f"     4 boards: {vf:6.2f} s  = {vf / vo:.2f} x one board")
        print(f"   medians of {REPS}; boards are esp32-mock-bootloader on ptys (no baud-rate limit, its flash writes are Python loops)")
        line_scaling(tmp / "img", tmp)


def _provision_processes(image_dir: Path, tmp: Path, boards_per_station: list[int]) -> tuple[float, list[float]]:
    """`fleetpin provision --virtual N` as the operator runs it, one process per station, all at
    once; (wall time of the whole line, each board's own seconds). Every board must be confirmed."""
    procs = []
    t0 = time.perf_counter()
    for i, n in enumerate(boards_per_station):
        argv = [sys.executable, "-m", "fleetpin", "provision", "--board", "esp32", "--image", str(image_dir),
                "--virtual", str(n), "--registry", str(tmp / f"line-{time.monotonic_ns()}-{i}.sqlite"), "--json"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    per_board: list[float] = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        results = json.loads(out)["results"] if out.strip() else []
        bad = [r["error"] for r in results if r["result"] != "provisioned"]
        if proc.returncode != 0 or bad or not results:
            raise RuntimeError(f"provisioning failed: {bad or err[-500:]}")
        per_board += [r["seconds"] for r in results]
    return time.perf_counter() - t0, per_board


def line_scaling(image_dir: Path, tmp: Path) -> None:
    """Issue 18: how a line scales on this PC: the whole command for 1, 4, 8 and 16 boards on one
    station and for 4 stations of 4, each as a ratio to one board alone (virtual stations: the
    real esptool through the ROM emulator, then the agent's confirmation)."""
    print("   the line on this PC (fleetpin provision --virtual, whole command, agent confirmation included):")
    one_total, one_boards = _provision_processes(image_dir, tmp, [1])
    one_board = statistics.median(one_boards)
    print(f"     1 station x  1 board : total {one_total:5.1f} s, per board {one_board:5.2f} s (the unit)")
    for label, layout in (("1 station x  4 boards", [4]), ("1 station x  8 boards", [8]),
                          ("1 station x 16 boards", [16]), ("4 stations x 4 boards", [4, 4, 4, 4])):
        total, boards = _provision_processes(image_dir, tmp, layout)
        n = sum(layout)
        print(f"     {label}: total {total:5.1f} s = {total / one_total:4.1f}x one board's command "
              f"for {n}x the boards; per board {statistics.median(boards):5.2f} s = "
              f"{statistics.median(boards) / one_board:4.1f}x")
