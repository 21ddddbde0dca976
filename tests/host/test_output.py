"""What a user sees, run as a user runs it: the real `fleetpin` process, on a terminal (a pty,
narrow or not) and in a pipe. Colour only on a terminal and never under NO_COLOR, on every line
(stdout and stderr); tables never cut a value (wrap, don't truncate); expected refusals in the
demo are not red errors."""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from fleetpin.line.registry import Attempt, Registry
from fleetpin.sim.pki import Pki, PkiFiles

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
NOW = f"@{int(time.time())}"  # one clock for runs that are compared


def run_piped(args: Sequence[str | Path], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetpin", *map(str, args)], capture_output=True, text=True,
                          env={**_base_env(), **(env or {})}, timeout=120)


def run_in_terminal(args: Sequence[str | Path], columns: int = 100, env: dict[str, str] | None = None,
                    code: str | None = None) -> tuple[int, str]:
    """(exit code, everything written to the terminal: stdout and stderr, as a person sees it)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    argv = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "fleetpin", *map(str, args)]
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env={**_base_env(), "COLUMNS": str(columns), "LINES": "50", **(env or {})})
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError as e:  # EIO: the child closed its end
            if e.errno != errno.EIO:
                raise
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    code_ = proc.wait(10)
    return code_, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    return env


def plain(text: str) -> str:
    return ANSI.sub("", text)


# --- colour: on a terminal only, never with NO_COLOR, on every line ----------------------------------


@pytest.fixture
def scene(tmp_path: Path, pki: Pki, pki_files: PkiFiles) -> dict[str, Path]:
    """Files for commands that print colour: a policy with lint errors, a registry with a failure."""
    expires = dt.datetime.fromtimestamp(time.time() + 100 * 86400, dt.timezone.utc).strftime("%Y-%m-%d")
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[defaults]\nexpires = {expires}\n\n[[domain]]\nhost = "device.test"\n'
                   f'pins = [{{ pin = "{pki.pins["leaf"]}", label = "primary" }}]\n')
    registry = tmp_path / "registry.sqlite"
    reg = Registry(registry)
    reg.record(Attempt("24:0a:c4:12:34:56", "esp32s3-devkitc-1-n16r8", "a" * 64, "b" * 64, "line-3-station-12",
                       "/dev/serial/by-id/usb-Silicon_Labs_CP2102N_USB_to_UART_Bridge_Controller_0001-if00-port0",
                       "operator-with-a-long-name", 1777636800.0, 1777636812.5, "failed",
                       "wrong chip: the board on this port is an ESP32-C3, the image is for an ESP32-S3"))
    reg.record(Attempt("24:0a:c4:ab:cd:ef", "esp32", "a" * 64, "b" * 64, "slot1", "/dev/ttyUSB1", "ana",
                       1777636900.0, 1777636910.0, "provisioned"))
    return {"bad": bad, "registry": registry, "chain": pki_files.chain("rogue_leaf"), "root": pki_files.cert("root")}


COLOURED = {
    "lint errors": lambda s: ["bundle", "lint", s["bad"]],
    "a refused chain": lambda s: ["check", "--policy", s["bad"], "--host", "device.test", s["chain"], "--now", NOW],
    "an error": lambda s: ["pin", s["bad"].with_name("missing.pem")],
    "the registry": lambda s: ["registry", "list", "--registry", s["registry"]],
    "the lint rules": lambda s: ["bundle", "lint", "--list-rules"],
    "the boards": lambda s: ["boards"],
}


@pytest.mark.parametrize("what", sorted(COLOURED))
def test_colour_only_on_a_terminal_and_never_with_no_color(scene: dict[str, Path], what: str) -> None:
    args = COLOURED[what](scene)
    _, coloured = run_in_terminal(args)
    assert ANSI.search(coloured), f"no styling at all on a terminal: {coloured[:300]}"  # the test means something
    _, no_color = run_in_terminal(args, env={"NO_COLOR": "1"})
    assert not ANSI.search(no_color), no_color
    assert plain(coloured).split() == no_color.split()  # the same words, only the styling differs
    piped = run_piped(args)
    assert not ANSI.search(piped.stdout + piped.stderr)


def test_no_color_holds_for_stderr_and_tty_detection_per_stream(scene: dict[str, Path]) -> None:
    # stdout piped, stderr on the terminal: the error line may be coloured, the data never
    _, both = run_in_terminal([], code=(
        "import subprocess, sys\n"
        f"p = subprocess.run([sys.executable, '-m', 'fleetpin', 'bundle', 'lint', {str(scene['bad'])!r}],"
        " stdout=subprocess.PIPE)\n"
        "sys.stderr.write('STDOUT:' + repr(p.stdout.decode()))\n"))
    assert "STDOUT:" in both and "\\x1b[" not in both.split("STDOUT:")[1]


# --- tables never cut a value ------------------------------------------------------------------------


def table_cells(text: str) -> list[str]:
    """Every cell of the tables in `text` with its wrapped lines joined (rich draws rows between
    │ bars; a row's continuation lines have an empty first cell)."""
    cells: list[str] = []
    row: list[list[str]] = []
    for line in plain(text).splitlines():
        if not line.startswith(("│", "┃")):
            cells += [" ".join(" ".join(parts).split()) for parts in row]
            row = []
            continue
        parts = [p.strip() for p in line.strip("│┃").split("│" if "│" in line else "┃")]
        if row and not parts[0]:
            for i, part in enumerate(parts):
                row[i].append(part)
        else:
            cells += [" ".join(" ".join(p).split()) for p in row]
            row = [[p] for p in parts]
    return cells + [" ".join(" ".join(p).split()) for p in row]


def _whole(value: str, text: str) -> bool:
    """value appears in text unbroken: on one line, or as a whole table cell wrapped at spaces."""
    flat = plain(text)
    return value in flat or " ".join(value.split()) in table_cells(flat) or value in " ".join(flat.split())


REGISTRY_VALUES = ["24:0a:c4:12:34:56", "24:0a:c4:ab:cd:ef", "esp32s3-devkitc-1-n16r8", "failed", "provisioned",
                   "line-3-station-12", "operator-with-a-long-name",
                   "/dev/serial/by-id/usb-Silicon_Labs_CP2102N_USB_to_UART_Bridge_Controller_0001-if00-port0",
                   "wrong chip: the board on this port is an ESP32-C3, the image is for an ESP32-S3",
                   "2026-05-01T12:00:12Z"]


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_registry_table_is_whole_on_any_terminal(scene: dict[str, Path], columns: int) -> None:
    code, out = run_in_terminal(["registry", "list", "--registry", scene["registry"]], columns=columns)
    assert code == 0
    assert "…" not in out
    for value in REGISTRY_VALUES:
        assert _whole(value, out), (value, out)


def test_registry_table_is_whole_in_a_pipe(scene: dict[str, Path]) -> None:
    done = run_piped(["registry", "list", "--registry", scene["registry"]], env={"COLUMNS": "40"})
    assert done.returncode == 0 and "…" not in done.stdout
    lines = done.stdout.splitlines()
    for value in REGISTRY_VALUES:  # every value on one line: grep finds it
        assert any(value in line for line in lines), value


def test_check_and_lint_rules_never_cut_a_pin_or_a_rule(scene: dict[str, Path], pki: Pki) -> None:
    for columns in (50, 120):
        code, out = run_in_terminal(["check", "--policy", scene["bad"], "--host", "device.test", scene["chain"]],
                                    columns=columns)
        assert code == 1 and "…" not in out
        assert _whole(pki.pins["rogue_leaf"], out) and _whole(pki.pins["leaf"], out)
        code, out = run_in_terminal(["bundle", "lint", "--list-rules"], columns=columns)
        assert code == 0 and "…" not in out
        from fleetpin.bundles.lint import RULES

        for rule in RULES.values():
            assert _whole(rule.title, out) and _whole(rule.hint, out), rule.id


# --- the demo: refusals it shows on purpose are not errors -------------------------------------------


def test_an_expected_refusal_is_not_a_red_error(scene: dict[str, Path], tmp_path: Path) -> None:
    code, out = run_in_terminal([], code=(
        "from pathlib import Path\n"
        "from fleetpin.sim.demo import Story\n"
        f"s = Story(Path({str(tmp_path)!r}))\n"
        f"s.run('check', '--policy', {str(scene['bad'])!r}, '--host', 'device.test', {str(scene['chain'])!r},"
        " expect=1)\n"))
    assert code == 0, out
    [line] = [x for x in out.splitlines() if "refused, as expected" in plain(x)]
    assert "\x1b[31m" not in line and "\x1b[1;31m" not in line
    assert not [x for x in plain(out).splitlines() if x.startswith("error:")]


def test_the_demo_prints_no_error_lines(tmp_path: Path) -> None:
    code, out = run_in_terminal(["demo", "--out", tmp_path / "demo"], columns=120)
    assert code == 0, out[-3000:]
    text = plain(out)
    assert not [x for x in text.splitlines() if x.startswith("error:")]  # what cli.main prints for a failure
    assert text.count("refused, as expected:") == 3
    refusals = [x for x in out.splitlines() if "refused, as expected" in x]
    assert all("\x1b[31m" not in x and "\x1b[1;31m" not in x for x in refusals)
