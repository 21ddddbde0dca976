"""fleetpin.vm.unix (real MicroPython, the unix port) and tools/run_device_tests_unix.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from runtimes import require_micropython

from fleetpin.commands.pin import device_pins
from fleetpin.errors import FleetpinError
from fleetpin.vm import unix

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"

require_micropython()


def test_the_heap_is_hard_and_garbage_is_collected_within_a_script() -> None:
    churn = "for i in range(3000):\n    b = bytearray(1000)\nprint('ok')"
    assert unix.run(churn, heap="heapsize=32K").stdout == "ok\n"
    big = unix.run("b = bytearray(40000)", heap="heapsize=32K")
    assert big.returncode == 1 and "MemoryError" in big.output  # (the traceback is on stdout)


def test_heap_in_words_is_twice_the_bytes_on_this_64_bit_build() -> None:
    size = "import gc\ngc.collect()\nprint(gc.mem_alloc() + gc.mem_free())"
    words = int(unix.run(size, heap=unix.heap_arg(64, word_scaled=True)).stdout)
    plain = int(unix.run(size, heap=unix.heap_arg(64)).stdout)
    assert 2 * 60_000 < words < 2 * 65_536 and 60_000 < plain < 65_536


def test_modules_come_from_the_given_path_only(tmp_path: Path) -> None:
    (tmp_path / "mod_here.py").write_text("X = 7\n")
    done = unix.run("import mod_here, requests\nprint(mod_here.X)", path=[tmp_path], cwd="/")
    assert done.stdout == "7\n", done.output  # requests: a frozen module, still found


def test_timeout_is_reported_not_raised() -> None:
    done = unix.run("while True:\n    pass", timeout=1)
    assert done.timed_out and not done.ok


def test_pins_by_the_agent_on_micropython_equal_cpython() -> None:
    ders = [p.read_bytes() for p in sorted((VECTORS / "certs").glob("*.der"))]
    assert ders
    assert unix.micropython_pins(ders) == device_pins(ders)


def test_pins_refuse_what_the_agent_cannot_parse() -> None:
    with pytest.raises(FleetpinError, match="cannot parse certificate 0"):
        unix.micropython_pins([b"\x30\x03\x02\x01"])


def test_runner_reports_passes_failures_skips_and_memory_errors(tmp_path: Path) -> None:
    def module(name: str, body: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(body))
        return path

    good = module("test_ugood.py", """
        import pinagent
        from support import raises
        def test_version():
            assert pinagent.VERSION
            print("RESULT: a figure")
        def test_raises():
            raises(KeyError, {}.__getitem__, "k")
        def test_needs_littlefs():
            try:
                import littlefs
            except ImportError:
                return
    """)
    bad = module("test_ubad.py", """
        def test_a_ok():
            pass
        def test_b_wrong():
            assert 1 == 2, "one is not two"
        def test_c_too_big():
            keep = [bytearray(1024) for i in range(400)]
    """)
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "run_device_tests_unix.py"), str(good), str(bad)],
                          capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "3 passed, 2 failed, 1 skipped", done.stdout + done.stderr
    assert done.returncode == 1
    assert "FAIL test_ubad::test_b_wrong: AssertionError: one is not two" in lines
    assert "FAIL test_ubad::test_c_too_big: MemoryError: memory allocation failed, allocating 1024 bytes" in lines
    assert "SKIP test_ugood::test_needs_littlefs: needs littlefs-python (a CPython C extension)" in lines
    assert "RESULT: a figure [test_ugood, MicroPython unix]" in lines
