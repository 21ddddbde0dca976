"""`fleetpin image build --app FILE_OR_DIR`: the firmware engineer's application goes onto the
board, compiled with mpy-cross as the agent is, where device/main.py imports it (`app`, on
/lib) and calls app.main(agent); the compiled application runs on real MicroPython; and a
virtual board booted from the image runs it against a loopback TLS server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import littlefs
import pytest
from fakefirmware import BUNDLE, SIGNERS, make_firmware

from fleetpin.line.boards import MIB, get_board
from fleetpin.line.image import build_image

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "tests" / "vectors" / "bundle"

APP = '''\
import sys
from helpers import greeting

def main(agent):
    print(greeting(agent))
'''


def cli_build(fleetpin: Callable[..., Any], tmp_path: Path, app: Path, out: str = "img") -> Any:
    fw = tmp_path / "firmware.bin"
    fw.write_bytes(make_firmware())
    return fleetpin("image", "build", "--board", "esp32", "--firmware", fw, "--bundle", VECTORS / "good.bin",
                    "--signers", VECTORS / "signers_prod.json", "-o", tmp_path / out, "--app", app, "--json")


def files_of(image: Path) -> dict[str, bytes]:
    m = json.loads((image / "manifest.json").read_text())
    fs = littlefs.LittleFS(context=littlefs.UserContext(buffer=bytearray((image / "fs.bin").read_bytes())),
                           block_size=4096, read_size=32, prog_size=32, lookahead_size=32, block_cycles=100,
                           block_count=0)
    out = {}
    for path in m["content"]["files"]:
        with fs.open(path, "rb") as f:
            out[path] = f.read()
    return out


def app_dir(tmp_path: Path) -> Path:
    d = tmp_path / "firmware-app"
    (d / "drivers").mkdir(parents=True)
    (d / "app.py").write_text(APP)
    (d / "helpers.py").write_text("def greeting(agent):\n    return 'hello from the app, agent ' + str(agent)\n")
    (d / "drivers" / "__init__.py").write_text("")
    (d / "drivers" / "sensor.py").write_text("def read():\n    return 21\n")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"ignored")
    return d


def test_a_file_becomes_the_app_module(fleetpin: Callable[..., Any], tmp_path: Path) -> None:
    src = tmp_path / "my_firmware.py"
    src.write_text("def main(agent):\n    print('up')\n")
    result = cli_build(fleetpin, tmp_path, src)
    assert result.exit_code == 0, result.stderr
    m = json.loads(result.stdout)
    assert m["content"]["app"] == ["/lib/app.mpy"]
    files = files_of(tmp_path / "img")
    assert files["/lib/app.mpy"][:1] == b"M"  # mpy-cross output, as the agent's modules
    assert "/main.py" in files and "/lib/pinagent/agent.mpy" in files
    assert fleetpin("image", "verify", tmp_path / "img").exit_code == 0
    text = fleetpin("image", "build", "--board", "esp32", "--firmware", tmp_path / "firmware.bin", "--bundle",
                    VECTORS / "good.bin", "--signers", VECTORS / "signers_prod.json", "-o", tmp_path / "img2",
                    "--app", src)
    assert "application: /lib/app.mpy" in text.stdout and m["image_id"] in text.stdout  # the id whole


def test_a_folder_ships_every_module(fleetpin: Callable[..., Any], tmp_path: Path) -> None:
    result = cli_build(fleetpin, tmp_path, app_dir(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["content"]["app"] == [
        "/lib/app.mpy", "/lib/drivers/__init__.mpy", "/lib/drivers/sensor.mpy", "/lib/helpers.mpy"]
    without = build_image(get_board("esp32"), make_firmware(), BUNDLE, SIGNERS, 4 * MIB, tmp_path / "plain")
    assert "app" not in without["content"]  # images without an application are as before


@pytest.mark.parametrize("change, message", [
    (lambda d: (d / "app.py").write_text("def start(agent):\n    pass\n"), "no main(agent) function"),
    (lambda d: (d / "app.py").unlink(), "no app.py (or app/ package)"),
    (lambda d: (d / "pinagent.py").write_text("x = 1\n"), "pinagent would replace the agent's own module"),
    (lambda d: (d / "main.py").write_text("x = 1\n"), "main would replace the agent's own module"),
    (lambda d: (d / "wifi.json").write_text("{}"), "only Python modules ship with the application, not wifi.json"),
])
def test_what_the_board_could_not_run_is_refused(fleetpin: Callable[..., Any], tmp_path: Path,
                                                 change: Callable[[Path], Any], message: str) -> None:
    d = app_dir(tmp_path)
    change(d)
    result = cli_build(fleetpin, tmp_path, d)
    assert result.exit_code == 2 and message in result.stderr and "next:" in result.stderr
    assert not (tmp_path / "img").exists()


def test_micropython_syntax_errors_are_mpy_cross_errors(fleetpin: Callable[..., Any], tmp_path: Path) -> None:
    src = tmp_path / "app.py"
    src.write_text("def main(agent):\n    print('unclosed'\n")
    result = cli_build(fleetpin, tmp_path, src)
    assert result.exit_code == 1 and "mpy-cross failed" in result.stderr and "app.py" in result.stderr


def test_the_installed_application_runs_on_micropython(fleetpin: Callable[..., Any], tmp_path: Path) -> None:
    from runtimes import require_micropython

    from fleetpin.vm import unix

    require_micropython()
    assert cli_build(fleetpin, tmp_path, app_dir(tmp_path)).exit_code == 0
    board = tmp_path / "board"
    for path, data in files_of(tmp_path / "img").items():
        target = board / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    # what the board does after the listening window (pinagent.io.board): load_app(), then app.main(agent)
    done = unix.run("import main\nfrom pinagent.io import board\napp = board.load_app()\napp.main('sim-1')\nimport drivers.sensor\n"
                    "print(drivers.sensor.read())\n", path=[board / "lib", board], cwd=board)
    assert done.ok, done.output
    assert done.stdout.splitlines() == ["hello from the app, agent sim-1", "21"]


# --- a virtual board boots the image and runs the application --------------------------------------------


def _flash_file(image: Path, path: Path) -> Path:
    """The board's whole flash as esptool would leave it after writing the image's regions."""
    m = json.loads((image / "manifest.json").read_text())
    flash = bytearray(b"\xff" * m["flash_size"])
    for r in m["regions"]:
        data = (image / r["file"]).read_bytes()
        flash[r["offset"] : r["offset"] + len(data)] = data
    path.write_bytes(bytes(flash))
    return path


def test_a_virtual_board_runs_the_application(fleetpin: Callable[..., Any], tmp_path: Path,
                                              tls_server: Callable[..., Any]) -> None:
    from fleetpin.sim import board as sim_board

    if not hasattr(sim_board, "_UnixCore"):
        pytest.skip("virtual boards run device/main.py from their flash only on the unix-port board "
                    "(fleetpin.sim.board runtime 'micropython', the board-support change): here the agent's "
                    "service runs without main.py, so there is no application hook to run")
    from runtimes import require_micropython

    require_micropython()
    server = tls_server("leaf", reply=b"HTTP/1.0 200 OK\r\n\r\nok")
    app = tmp_path / "app.py"
    app.write_text(
        "def main(agent):\n"
        f"    sock = agent.connect('device.test', {server.port}, timeout=10)\n"
        "    sock.write(b'GET /from-the-app HTTP/1.0\\r\\nHost: device.test\\r\\n\\r\\n')\n"
        "    sock.read()\n"
        "    sock.close()\n")
    result = _signed_image(fleetpin, tmp_path, app)
    flash = _flash_file(tmp_path / "img", tmp_path / "flash.img")
    with sim_board.VirtualBoard(flash=flash, runtime="micropython"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(b"/from-the-app" in r for r in server.requests):
            time.sleep(0.2)
    assert any(b"GET /from-the-app" in r for r in server.requests), (result, server.failed)


def _signed_image(fleetpin: Callable[..., Any], tmp_path: Path, app: Path) -> Any:
    """An image whose bundle pins the test PKI's server (device.test), with its CA."""
    from fleetpin.sim.pki import make_pki

    pki = make_pki("device.test")
    env = {"FLEETPIN_KEY_PASSPHRASE": "correct horse battery"}
    for name in ("ops", "vault"):
        assert fleetpin("key", "new", "--signing", "--id", name, "-o", tmp_path / "keys", env=env).exit_code == 0
    assert fleetpin("key", "signers", tmp_path / "keys/ops.pub.json", tmp_path / "keys/vault.pub.json",
                    "-o", tmp_path / "signers.json").exit_code == 0
    (tmp_path / "root.pem").write_bytes(pki.root.pem)
    expires = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 100 * 86400))
    (tmp_path / "policy.toml").write_text(
        f'[defaults]\nexpires = {expires}\n\n[[domain]]\nhost = "device.test"\n'
        f'pins = [{{ pin = "{pki.pins["leaf"]}", label = "primary" }}, {{ pin = "{pki.pins["backup"]}", label = "backup" }}]\n'
        '\n[bundle]\nca_certs = ["root.pem"]\n')
    assert fleetpin("bundle", "build", tmp_path / "policy.toml", "--fleet", "acme", "--version", "1", "--key",
                    tmp_path / "keys/ops.key.pem", "-o", tmp_path / "b.fpb", "--issued", "@" + str(int(time.time()) - 60),
                    env=env).exit_code == 0
    fw = tmp_path / "firmware.bin"
    fw.write_bytes(make_firmware())
    result = fleetpin("image", "build", "--board", "esp32", "--firmware", fw, "--bundle", tmp_path / "b.fpb",
                      "--signers", tmp_path / "signers.json", "-o", tmp_path / "img", "--app", app)
    assert result.exit_code == 0, result.stderr
    return result


# --- the README's application builds, and does what it says ------------------------------------------


def readme_app(directory: Path) -> Path:
    """The application the README shows (app.py and config.py), written into `directory`."""
    import re

    text = (REPO / "README.md").read_text()
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("app.py", "config.py"):
        found = re.search(rf"<!-- {re.escape(name)} -->\n```python\n(.*?)```", text, re.DOTALL)
        assert found, f"the README shows no {name}"
        (directory / name).write_text(found.group(1))
    return directory


_STUBS = {
    # what the unix port lacks and a board has: Wi-Fi and SNTP, as no-ops
    "network.py": "STA_IF = 0\nclass WLAN:\n    def __init__(self, i): pass\n    def active(self, on): pass\n"
                  "    def isconnected(self): return True\n    def connect(self, ssid, password): pass\n",
    "ntptime.py": "def settime():\n    pass\n",
}

_HARNESS = """\
import time as real_time
from pinagent.connect import PinBlocked
import app

class Time:  # the app's clock, without its minute-long sleeps
    def __getattr__(self, name):
        return getattr(real_time, name)
    def sleep(self, s):
        pass

app.time = Time()

class Sock:
    def __init__(self, data):
        self.data, self.pos, self.sent = data, 0, b""
    def write(self, b):
        self.sent += b
    def readline(self):
        end = self.data.find(b"\\n", self.pos)
        end = len(self.data) if end < 0 else end + 1
        line, self.pos = self.data[self.pos:end], end
        return line
    def read(self, n=-1):
        rest, self.pos = self.data[self.pos:], len(self.data)
        return rest
    def close(self):
        print("closed")

class Agent:
    def __init__(self):
        self.calls, self.times = 0, []
    def open(self, host, port, timeout=None):
        self.calls += 1
        print("connect", host, port, timeout)
        if self.calls == 1:
            self.sock = Sock(b"HTTP/1.0 200 OK\\r\\nServer: x\\r\\nDate: Fri, 01 May 2026 12:00:00 GMT\\r\\n\\r\\n{}")
            return self.sock, "the check"
        raise PinBlocked("mismatch", None, "no pinned key in the chain", host, port)
    def server_time(self, check, t):
        self.times.append((check, t))

agent = Agent()
app.main(agent)
print("request", agent.sock.sent)
print("trusted", agent.times, "calls", agent.calls)
"""


def test_the_readme_application_builds_and_handles_a_blocked_pin(fleetpin: Callable[..., Any], tmp_path: Path) -> None:
    src = readme_app(tmp_path / "firmware-app")
    result = cli_build(fleetpin, tmp_path, src)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["content"]["app"] == ["/lib/app.mpy", "/lib/config.mpy"]

    from runtimes import require_micropython

    from fleetpin.vm import unix

    require_micropython()
    board = tmp_path / "board"
    for path, data in files_of(tmp_path / "img").items():  # the compiled app and agent, as installed
        target = board / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for name, code in _STUBS.items():
        (board / "lib" / name).write_text(code)
    (board / "harness.py").write_text(_HARNESS)
    done = unix.run(board / "harness.py", path=[board / "lib"], cwd=board, env={"TZ": "UTC"})
    assert done.ok, done.output
    lines = done.stdout.splitlines()
    assert lines.count("connect api.example.com 443 10") == 4  # one good request, then three refusals
    assert "config: 200 2 bytes" in lines
    assert sum(line.startswith("pin blocked: mismatch") for line in lines) == 3  # then main() returned
    assert "request b'GET /v1/config HTTP/1.0\\r\\nHost: api.example.com\\r\\n\\r\\n'" in lines
    assert "trusted [('the check', 1777636800)] calls 4" in lines  # the pinned response's Date, with its check
