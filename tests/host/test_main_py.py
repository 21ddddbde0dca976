"""device/main.py and pinagent.io.console, run under CPython: fake `micropython`, `machine` and
`tls` modules in sys.modules, the board's flash as tests/device/faultfs.py, the console as a
scripted host (fleetpin.protocol.client.Client) on a fake clock.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import runpy
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetpin.protocol.client import Client
from pinagent import store as S

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
sys.path.insert(0, str(ROOT / "tests" / "device"))
from faultfs import FaultFS  # noqa: E402

FLEET = "acme-sensors"
R = "/fleetpin/"


class Stop(BaseException):
    """Ends the test's board: main.py serves forever, and catches only Exception."""


class Board:
    """Fake modules, flash, clock and a host on the console."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[Any] = []
        self.now = 0
        self.stop_at = 120_000
        self.ffs = FaultFS(dirs=["/fleetpin"])
        self.client = Client(rto_ms=200)
        self.actions: list[tuple[int, Callable[[], Any]]] = []
        self.writes = 0
        board = self

        self.kbd_faults: list[BaseException] = []  # raised by the next kbd_intr(-1) calls, in order
        self.reset_faults: list[BaseException] = []  # raised by the next machine.reset() calls

        def kbd_intr(c: int) -> None:
            board.events.append(("kbd_intr", c))
            if c == -1 and board.kbd_faults:
                raise board.kbd_faults.pop(0)

        def reset() -> None:
            board.events.append(("reset", board.now))
            if board.reset_faults:
                raise board.reset_faults.pop(0)

        micropython = types.ModuleType("micropython")
        micropython.kbd_intr = kbd_intr  # type: ignore[attr-defined]
        machine = types.ModuleType("machine")
        machine.reset = reset  # type: ignore[attr-defined]
        machine.unique_id = lambda: bytes.fromhex("a0b1c2d3e4f5")  # type: ignore[attr-defined]
        tls = types.ModuleType("tls")  # present, as on the board; no test here connects
        for name, mod in (("micropython", micropython), ("machine", machine), ("tls", tls)):
            monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.delitem(sys.modules, "app", raising=False)

        from pinagent.io import console, flash

        monkeypatch.setattr(flash, "filesystem", lambda: S.FS(self.ffs, self.ffs.open))
        monkeypatch.setattr(console, "StdioPort", lambda: self)
        monkeypatch.setattr(console, "ticks_ms", lambda: self.now)
        monkeypatch.setattr(console, "sleep_ms", lambda ms: None)
        self.console = console
        # main.py reads /fleetpin/config.json with plain open() (it must decide whether the board
        # is locked even when the agent's code cannot be imported): the board's files are the fake flash
        real_open = builtins.open

        def board_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, str) and path.startswith(R):
                return self.ffs.open(path, "rb" if "r" in mode else "wb")
            return real_open(path, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", board_open)

    def provision(self, bundle: str | None = "v1.bin", config: Any = None) -> None:
        signers = (VECTORS / "bundle" / "signers_prod.json").read_bytes()
        self.ffs.files[R + "signers.bin"] = signers
        if bundle:
            self.ffs.files[R + "bundle.bin"] = S.encode_slot(signers, (VECTORS / "agent" / bundle).read_bytes())
        cfg = {"fleet": FLEET, "board": "esp32", "image_id": "x"} if config is None else config
        self.ffs.files[R + "config.json"] = cfg if isinstance(cfg, bytes) else json.dumps(cfg).encode()

    def at(self, t: int, fn: Callable[[], Any]) -> None:
        self.actions.append((t, fn))

    # the console port
    def read(self, timeout_ms: int) -> bytes:
        self.now += timeout_ms
        if self.now > self.stop_at:
            raise Stop()
        for item in [a for a in self.actions if a[0] <= self.now]:
            self.actions.remove(item)
            item[1]()
        self.client.tick(self.now)
        return bytes(self.client.data_to_send(self.now))

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.client.receive_data(bytes(data), self.now)

    def run_main(self) -> Any:
        """What main() returned (on a board: the REPL follows), "stopped" if it was still running
        when the test ended it, or "REPL after X" if exception X ended main.py (the REPL too)."""
        try:
            g = runpy.run_path(str(ROOT / "device" / "main.py"), run_name="fleetpin_main")
            self.events.append(("loaded", None))
            return g["main"]()
        except Stop:
            return "stopped"
        except BaseException as e:  # noqa: B036 - KeyboardInterrupt must not end pytest
            self.events.append(("left main.py", e))
            return f"REPL after {type(e).__name__}"

    def ctrl_c_on_after_start(self) -> list[Any]:
        """Every kbd_intr(3) after main.py's first line (which turns Ctrl-C off)."""
        switches = [e for e in self.events if e[0] == "kbd_intr"]
        return [e for e in switches[1:] if e[1] != -1]


@pytest.fixture
def board(monkeypatch: pytest.MonkeyPatch) -> Iterator[Board]:
    yield Board(monkeypatch)


def install_app(monkeypatch: pytest.MonkeyPatch, board: Board, fail: bool | BaseException = False) -> list[Any]:
    ran: list[Any] = []
    app = types.ModuleType("app")

    def main(agent: Any) -> None:
        ran.append((board.now, agent, list(board.events)))
        if isinstance(fail, BaseException):
            raise fail
        if fail:
            raise RuntimeError("app crashed")

    app.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "app", app)
    return ran


def test_a_config_that_names_the_board_gives_its_device_id(board: Board) -> None:
    """Without a name in config.json the id is the base MAC (above); a config that names this
    one board (a per-board provisioning step, a virtual board's flash) gives that name."""
    board.provision(config={"fleet": FLEET, "board": "esp32", "image_id": "x", "device_id": "pump-17"})
    calls: list[Any] = []
    board.at(100, lambda: calls.append(board.client.identify()))
    board.run_main()
    assert calls[0].result["device_id"] == "pump-17"
    for unnamed in ("", 17, None):  # not a name: the MAC again
        board.provision(config={"fleet": FLEET, "device_id": unnamed})
        assert board.console.board_agent().device_id == "a0b1c2d3e4f5"


def test_main_serves_a_window_then_runs_the_app(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    board.provision()
    ran = install_app(monkeypatch, board)
    calls: list[Any] = []
    board.at(100, lambda: calls.append(board.client.identify()))
    assert board.run_main() == "stopped"
    assert board.events[0] == ("kbd_intr", -1)  # before anything else, at import
    info = calls[0].result
    assert info["mode"] == S.MODE_OK and info["fleet"] == FLEET and info["bundle_version"] == 1
    assert info["device_id"] == "a0b1c2d3e4f5" and info["clock"] in ("trusted", "floor", "unset")
    assert info["mac"] == "a0:b1:c2:d3:e4:f5"  # machine.unique_id(): the base MAC esptool read on the line
    # the session went idle for 30 s, then the app ran with the agent
    assert len(ran) == 1 and 30_000 <= ran[0][0] < 32_000 and ran[0][1].state.mode == S.MODE_OK


def test_an_upload_never_committed_is_freed_before_the_app_runs(board: Board,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A host starts an upload and goes away: the buffer (up to 32 KB) must not stay on the heap
    # the application then runs in.
    board.provision()
    ran = install_app(monkeypatch, board)
    data = (VECTORS / "agent" / "v2.bin").read_bytes()
    calls: list[Any] = []
    board.at(100, lambda: calls.append(board.client.write_begin(len(data), hashlib.sha256(data).digest())))
    board.at(200, lambda: calls.append(board.client.write_chunk(0, data[:150])))
    board.run_main()
    assert calls[0].ok and calls[1].ok
    agent = ran[0][1]
    assert agent._incoming is None and agent.state.version == 1


def test_serving_for_good_frees_an_idle_sessions_upload(board: Board) -> None:
    board.provision()
    data = (VECTORS / "agent" / "v2.bin").read_bytes()
    calls: list[Any] = []
    board.at(40_000, lambda: calls.append(board.client.write_begin(len(data), hashlib.sha256(data).digest())))
    board.at(40_100, lambda: calls.append(board.client.write_chunk(0, data[:150])))
    board.at(80_000, lambda: calls.append(board.client.write_chunk(150, data[150:300])))  # 40 s later
    board.stop_at = 85_000
    board.run_main()  # no app: the board serves for good
    assert calls[0].ok and calls[1].ok
    assert calls[2].error is not None and calls[2].error.name == "no_write"  # the idle session's buffer is gone


def test_no_hello_closes_the_window_after_3_s(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    board.provision()
    ran = install_app(monkeypatch, board)
    board.stop_at = 10_000
    board.client = Client(rto_ms=200)  # a host that never says anything: nothing is sent
    board.client.data_to_send = lambda now: b""
    board.run_main()
    assert len(ran) == 1 and 3_000 <= ran[0][0] < 3_100
    # a locked production board keeps Ctrl-C off while the app runs: the last switch before it is off
    assert [e for e in ran[0][2] if e[0] == "kbd_intr"][-1] == ("kbd_intr", -1)


def test_ctrl_c_never_drops_a_production_board_to_the_repl(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    board.provision()
    app = types.ModuleType("app")

    def interrupted(agent: Any) -> None:
        raise KeyboardInterrupt  # what a 0x03 byte does if Ctrl-C were on
    app.main = interrupted  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "app", app)
    calls: list[Any] = []
    board.at(40_000, lambda: calls.append(board.client.identify()))
    board.run_main()  # ends only by the test's Stop: main.py went on serving
    assert calls[0].result["mode"] == S.MODE_OK


def test_without_an_app_it_keeps_serving(board: Board) -> None:
    board.provision()
    calls: list[Any] = []
    board.at(50_000, lambda: calls.append(board.client.identify()))  # long after the window
    board.run_main()
    assert calls[0].result["bundle_version"] == 1


def test_junk_in_storage_still_boots_into_the_agent(board: Board) -> None:
    board.provision(config=b"\xff\xfe not json")
    board.ffs.files[R + "bundle.bin"] = b"\x00" * 700
    board.ffs.files[R + "state.bin"] = b"junk"
    board.ffs.files[R + "reports.bin"] = b"\xff" * 100
    calls: list[Any] = []
    board.at(100, lambda: calls.append(board.client.identify()))
    board.at(200, lambda: calls.append(board.client.read_reports(0)))
    board.stop_at = 10_000
    board.run_main()
    info = calls[0].result
    assert info["mode"] == S.MODE_SAFE and info["fleet"] is None and info["problems"]
    assert calls[1].ok


def test_an_agent_that_cannot_be_built_still_answers(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> None:
        raise MemoryError("no heap")

    monkeypatch.setattr(board.console, "board_agent", broken)
    calls: list[Any] = []
    board.at(100, lambda: calls.append(board.client.identify()))
    board.at(150, lambda: calls.append(board.client.read_bundle(0)))
    board.stop_at = 10_000
    board.run_main()
    assert calls[0].result == {"mode": "broken", "error": "MemoryError: no heap", "proto": 1}
    assert calls[1].error.name == "unsupported"


def test_reboot_resets_after_the_answer_is_written(board: Board) -> None:
    board.provision()
    calls: list[Any] = []
    board.at(100, lambda: calls.append(board.client.reboot()))
    board.stop_at = 10_000
    board.run_main()
    resets = [e for e in board.events if e[0] == "reset"]
    assert len(resets) >= 1 and calls[0].ok


def test_an_app_that_fails_falls_back_to_serving(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    board.provision()
    ran = install_app(monkeypatch, board, fail=True)
    calls: list[Any] = []
    board.at(40_000, lambda: calls.append(board.client.identify()))
    board.run_main()
    assert len(ran) == 1 and calls[0].result["mode"] == S.MODE_OK


def test_development_boards_get_the_repl_back(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    board.provision(config={"fleet": FLEET, "repl": True})
    board.stop_at = 10_000
    board.client.data_to_send = lambda now: b""
    agent = board.run_main()
    assert agent.state.mode == S.MODE_OK and board.events[-1] == ("kbd_intr", 3)


def _agent_not_installed(monkeypatch: pytest.MonkeyPatch, board: Board) -> list[float]:
    import time

    import pinagent.io

    for name in ("console", "board"):  # the imports fail, even of modules an earlier test loaded
        monkeypatch.setitem(sys.modules, "pinagent.io." + name, None)
        monkeypatch.delattr(pinagent.io, name, raising=False)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        if len(slept) > 3:
            raise Stop()
        raise KeyboardInterrupt  # as if a 0x03 got through while it waits: it stays anyway

    monkeypatch.setattr(time, "sleep", sleep)
    return slept


def test_an_agent_that_is_not_installed_gives_the_repl_back_on_development_boards(
        board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    board.provision(config={"fleet": FLEET, "repl": True})
    _agent_not_installed(monkeypatch, board)
    assert board.run_main() is None
    assert board.events[0] == ("kbd_intr", -1) and board.events[-1] == ("kbd_intr", 3)


@pytest.mark.parametrize("config", [None, b"junk", {"fleet": FLEET}, {"fleet": FLEET, "repl": "yes"}])
def test_an_agent_that_is_not_installed_never_gives_a_locked_board_the_repl(
        board: Board, monkeypatch: pytest.MonkeyPatch, config: Any) -> None:
    """Without the agent there is nothing to serve, but a production board (any config that does
    not say "repl": true, or none) stays in main.py with Ctrl-C off, saying why."""
    if config is None:
        board.ffs.files.pop(R + "config.json", None)
    else:
        board.provision(config=config)
    slept = _agent_not_installed(monkeypatch, board)
    assert board.run_main() == "stopped" and len(slept) == 4
    assert board.ctrl_c_on_after_start() == []


def _deep_sleep_wake(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = sys.modules["machine"]
    monkeypatch.setattr(machine, "DEEPSLEEP_RESET", 4, raising=False)
    monkeypatch.setattr(machine, "reset_cause", lambda: 4, raising=False)


def test_a_wake_from_deep_sleep_runs_the_app_at_once(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    """A board that deep-sleeps pays its boot at every wake: no listening window then (issue 19,
    item 6). A reset (the button, the host's DTR/RTS, power) still opens it."""
    board.provision()
    _deep_sleep_wake(monkeypatch)
    ran = install_app(monkeypatch, board)
    board.stop_at = 10_000
    board.run_main()
    assert len(ran) == 1 and ran[0][0] == 0 and ran[0][1].state.mode == S.MODE_OK  # no wait at all
    assert [e for e in ran[0][2] if e[0] == "kbd_intr"] == [("kbd_intr", -1)]  # locked: Ctrl-C stays off
    assert board.ctrl_c_on_after_start() == []


def test_a_development_board_waking_from_deep_sleep_gets_ctrl_c_for_its_app(
        board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    board.provision(config={"fleet": FLEET, "repl": True})
    _deep_sleep_wake(monkeypatch)
    ran = install_app(monkeypatch, board)
    board.stop_at = 10_000
    board.run_main()
    assert len(ran) == 1 and ran[0][0] == 0
    assert [e for e in ran[0][2] if e[0] == "kbd_intr"][-1] == ("kbd_intr", 3)  # as after a window


def test_posix_clock_converts_the_2000_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    from pinagent.io import console

    monkeypatch.setattr(console.time, "gmtime", lambda t=0: (2000, 1, 1, 0, 0, 0, 5, 1))
    monkeypatch.setattr(console.time, "time", lambda: 820454400)  # 2025-12-31 on the ESP32 clock
    assert console.posix_clock() == 1767139200
    monkeypatch.setattr(console.time, "time", lambda: 5)  # never set: 2000-01-01 00:00:05
    assert console.posix_clock() is None


# ---- no moment after main.py starts may reach the REPL on a locked board


def test_a_production_board_never_turns_ctrl_c_on(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    """From main.py's first line on, a locked board never has Ctrl-C on: not when the window ends
    (serve() used to turn it back on in its finally, before main.py turned it off again), not
    while the app runs or fails, not in the serve loop's error path (which used to sleep a second
    with Ctrl-C on), not around a REBOOT. Each of those moments was a way to the REPL."""
    board.provision()
    ran = install_app(monkeypatch, board, fail=True)
    board.reset_faults = [OSError(5)]  # the first REBOOT's reset fails: serve() raises in the serve loop
    calls: list[Any] = []
    board.at(40_000, lambda: calls.append(board.client.reboot()))
    board.at(50_000, lambda: calls.append(board.client.identify()))
    board.stop_at = 60_000
    assert board.run_main() == "stopped"
    assert len(ran) == 1 and [e for e in board.events if e[0] == "reset"]
    assert calls[-1].result["mode"] == S.MODE_OK  # still serving after the failed reset
    assert board.ctrl_c_on_after_start() == []


def test_a_ctrl_c_pending_from_before_main_py_turned_it_off_is_caught(board: Board) -> None:
    """The firmware runs main.py with Ctrl-C on. A 0x03 in the moment before main.py's first
    line turns it off is not raised at once: the VM raises it at its next check point (a jump),
    after kbd_intr(-1) returned. Here kbd_intr(-1) raises it on its first call: main.py must
    catch it and go on."""
    board.provision()
    board.kbd_faults = [KeyboardInterrupt()]
    calls: list[Any] = []
    board.at(100, lambda: calls.append(board.client.identify()))
    board.stop_at = 10_000
    assert board.run_main() == "stopped"
    assert calls[0].result["mode"] == S.MODE_OK
    assert board.ctrl_c_on_after_start() == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(0), MemoryError("app heap")],
                         ids=["KeyboardInterrupt", "SystemExit", "MemoryError"])
def test_whatever_the_app_raises_a_production_board_keeps_serving(board: Board, monkeypatch: pytest.MonkeyPatch,
                                                                   exc: BaseException) -> None:
    board.provision()
    ran = install_app(monkeypatch, board, fail=exc)
    calls: list[Any] = []
    board.at(40_000, lambda: calls.append(board.client.identify()))
    board.stop_at = 50_000
    assert board.run_main() == "stopped"
    assert len(ran) == 1 and calls[0].result["mode"] == S.MODE_OK


def test_the_serve_loop_survives_a_failure_in_its_own_error_path(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve() fails, and the pause after it is interrupted too: the board goes on serving."""
    board.provision()
    real_serve = board.console.serve
    failures = [RuntimeError("serve failed")]

    def serve(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("window_ms") is None and failures:
            raise failures.pop()
        return real_serve(*args, **kwargs)

    def sleep_ms(ms: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(board.console, "serve", serve)
    monkeypatch.setattr(board.console, "sleep_ms", sleep_ms)
    calls: list[Any] = []
    board.at(40_000, lambda: calls.append(board.client.identify()))
    board.stop_at = 50_000
    assert board.run_main() == "stopped"
    assert not failures and calls[0].result["mode"] == S.MODE_OK
