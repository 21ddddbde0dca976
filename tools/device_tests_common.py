"""What the device-test runners share (tools/run_device_tests_vm.py, tools/run_device_tests_unix.py):
which tests a module holds, which pinagent modules it imports, and the RESULT: lines it prints.

The device-core tests (tests/device/test_*.py) are plain modules: top-level `def test_*()`
functions with plain asserts, run unchanged under pytest and by these runners on MicroPython.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVICE = ROOT / "device"
TESTS = ROOT / "tests" / "device"
VECTORS = ROOT / "tests" / "vectors"
# The host ends of the serial protocol, the device's peer in the link and service tests: host code
# kept MicroPython-compatible for exactly this; mirrored as fleetpin/protocol/ beside pinagent.
PROTOCOL = ROOT / "host" / "fleetpin" / "protocol"
HOST_PEERS = [PROTOCOL / name for name in ("__init__.py", "link_host.py", "client.py")]
RESULT_PREFIX = "RESULT: "  # figures a test reports (see tests/conftest.py), shown in CI's output


def test_names(path: Path) -> list[str]:
    """Top-level `def test_*` in the module, sorted (what the runners call)."""
    tree = ast.parse(path.read_text(), str(path))
    return sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"))


def selected(path: Path, selector: str | None) -> list[str]:
    """test_names whose 'module::name' contains selector (all without one)."""
    return [n for n in test_names(path) if selector is None or selector in f"{path.stem}::{n}"]


def pinagent_imports(path: Path) -> list[str]:
    """pinagent modules the test imports, to import each on its own first (less garbage per step)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] == "pinagent" and name not in found:
                found.append(name)
    # only real modules: "from pinagent.der import parse" yields "pinagent.der.parse" too
    return [n for n in found if module_file(n) is not None]


def module_file(dotted: str) -> Path | None:
    base = DEVICE / Path(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def helper_modules() -> list[Path]:
    """tests/device/*.py that are not test modules (support, faultfs): every test may import them."""
    return [p for p in sorted(TESTS.glob("*.py")) if not p.name.startswith("test_")]


def result_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
