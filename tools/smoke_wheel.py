"""The package is the product: build the wheel and the sdist, install the wheel (with the `sim`
extra, as a line operator or a security engineer would) into a throwaway venv, and run what
users run from a temporary folder outside any checkout. Exit 1 on any failure.

Also checks that every package of the source tree is in the wheel, and that the wheel carries
the agent (pinagent, main.py, manifest.py), the board definitions, the example policy and the
licence. Dependencies come from the package index (pip's cache makes a rerun quick).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUST_SHIP = ("pinagent/agent.py", "pinagent/io/tls.py", "fleetpin/shipped/device/main.py",
             "fleetpin/shipped/device/manifest.py", "fleetpin/shipped/boards/esp32.toml",
             "fleetpin/shipped/examples/policy.toml", "fleetpin/vm/runner.mjs",
             "fleetpin/sim/unixport/_boot.py", "fleetpin/shipped/device/PORTS.md",
             "fleetpin/shipped/device/pinagent/agent.py", "fleetpin/shipped/device/pinagent/io/tls.py")


class SmokeFailed(Exception):
    pass


def sh(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    shown = " ".join(Path(a).name if a.startswith("/") and "bin/" in a else a for a in argv)
    print(f"  {'ok  ' if done.returncode == 0 else 'FAIL'} {shown} ({time.perf_counter() - started:.1f} s)", flush=True)
    if done.returncode != 0:
        raise SmokeFailed(f"{shown} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def source_packages() -> set[str]:
    found = set()
    for root, top in ((REPO / "host" / "fleetpin", "fleetpin"), (REPO / "device" / "pinagent", "pinagent")):
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join([top, *rel.parts]))
    return found


def check_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in MUST_SHIP if n not in names]
    missing += [p for p in sorted(source_packages()) if p.replace(".", "/") + "/__init__.py" not in names]
    if not any(n.endswith("licenses/LICENSE") for n in names):
        missing.append("LICENSE")
    if missing:
        raise SmokeFailed(f"the wheel lacks: {', '.join(missing)}")
    print(f"  ok   the wheel holds every package and the shipped files ({len(names)} files)")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fleetpin-smoke-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            sh([sys.executable, "-m", "build", "-o", str(tmp / "dist"), str(REPO)], tmp)
            wheel = next((tmp / "dist").glob("*.whl"))
            check_wheel(wheel)
            sh([sys.executable, "-m", "venv", str(tmp / "venv")], tmp)
            bin_ = tmp / "venv" / "bin"
            sh([str(bin_ / "pip"), "install", "-q", f"{wheel}[sim]"], tmp)
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
            run_as_user(bin_ / "fleetpin", tmp / "work", env)
        except SmokeFailed as e:
            print(f"smoke test of the installed wheel FAILED: {e}")
            return 1
    print("smoke test of the installed wheel: every command ran")
    return 0


def run_as_user(fleetpin: Path, work: Path, env: dict[str, str]) -> None:
    work.mkdir()
    fp = str(fleetpin)

    def run(*args: str, timeout: float = 600) -> str:
        return sh([fp, *args], work, env, timeout)

    run("--help")
    run("--version")
    run("demo", "--out", "demo")  # keys, bundles, image, provisioning, field update, drills
    d = work / "demo"
    for runtime in ("host", "device", "micropython", "wasm"):
        out = run("pin", str(d / "pki" / "leaf.pem"), "--runtime", runtime)
        if "sha256/" not in out and len(out.split()) < 2:
            raise SmokeFailed(f"pin --runtime {runtime} printed no pin: {out!r}")
    run("boards")
    run("image", "build", "--board", "esp32", "--firmware", str(d / "firmware.bin"), "--bundle", str(d / "v1.fpb"),
        "--signers", str(d / "signers.json"), "-o", "img")
    run("provision", "--board", "esp32", "--image", "img", "--virtual", "2", "--registry", "reg.sqlite", "--json")
    run("registry", "migrate", "--registry", "reg.sqlite")  # the migration scripts shipped in the wheel
    run("registry", "boards", "--registry", "reg.sqlite")
    run("fleet", "status", "--registry", "reg.sqlite", "--json")
    run("export", "android", str(d / "policy.toml"))
    board = subprocess.Popen([fp, "sim", "board", "--fleet", "acme-sensors", "--signers", str(d / "signers.json"),
                              "--seed-bundle", str(d / "v1.fpb"), "--json"], cwd=work, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert board.stdout is not None
        port = json.loads(board.stdout.readline())["port"]
        run("device", "info", "--port", port)
        run("device", "update", "--port", port, str(d / "v2.fpb"), "--yes", "--receipt", "receipt.json")
    finally:
        board.terminate()
        board.wait(timeout=30)
    run("drill", "all")


if __name__ == "__main__":
    sys.exit(main())
