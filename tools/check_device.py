"""Checks the device code (device/pinagent, device/main.py) the way the board will see it.

1. Type check with mypy against the MicroPython ESP32 stubs (micropython-esp32-stubs and
   micropython-stdlib-stubs, installed in the venv), assembled into a custom typeshed under
   build/device-typeshed-<hash>: a call the board does not have (hashlib.sha512, hexdigest(),
   json.dumps(sort_keys=...), import hmac) fails.  Settings: tools/mypy-device.ini.
2. Compile every file with mpy-cross for -march=xtensawin (ESP32, S3) and rv32imc (C3) into
   build/mpy/<arch>/, failing on any compile error.

Exit 0 if both pass, 1 otherwise.  `--files` checks other files instead (used by the tests).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from fleetpin import agent_files
from fleetpin.errors import FleetpinError

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "device"
BUILD = ROOT / "build"
CONFIG = ROOT / "tools" / "mypy-device.ini"
STUB_DISTS = ("micropython-stdlib-stubs", "micropython-esp32-stubs")  # later ones override
ARCHS = ("xtensawin", "rv32imc")

# Corrections to the stubs where they claim more than the board has (checked on the VM, 1.27):
# (file in the typeshed, text to find, replacement, why)
STUB_FIXES = [
    ("stdlib/_mpy_shed/__init__.pyi", "    def hexdigest(self) -> str:",
     "    def _hexdigest_absent_on_micropython(self) -> str:",
     "hash objects have no hexdigest() (the stub documents it as 'NOT implemented')"),
    ("stdlib/_mpy_shed/time_mp.pyi", "_TimeTuple: TypeAlias = _Time8Tuple | _Time9Tuple | Tuple[int, ...]",
     "_TimeTuple: TypeAlias = _Time8Tuple | _Time9Tuple",
     "time.mktime() raises TypeError unless given 8 or 9 items"),
]


def device_sources(root: Path = DEVICE) -> list[Path]:
    """What ships to the board, as device/manifest.py says."""
    return [f.source for f in agent_files.read_manifest(root)]


def build_typeshed() -> Path:
    """Assembles the stub packages into typeshed layout (stdlib/ + stubs/), once per version.

    Built in a temporary directory and renamed into place, so parallel runs never see half a tree.
    """
    try:
        dists = [distribution(name) for name in STUB_DISTS]
    except PackageNotFoundError as e:
        raise FleetpinError(f"stub package {e.name} is not installed", hint="run `make setup`") from None
    stamp = " ".join(f"{d.metadata['Name']}=={d.version}" for d in dists) + repr(STUB_FIXES)
    final = BUILD / ("device-typeshed-" + hashlib.sha256(stamp.encode()).hexdigest()[:12])
    if final.is_dir():
        return final
    BUILD.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="device-typeshed-tmp-", dir=BUILD))
    try:
        _assemble(dists, tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # not just another run that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _assemble(dists: list[Distribution], out: Path) -> None:
    for dist in dists:
        for f in dist.files or []:
            if f.suffix != ".pyi" and f.name != "VERSIONS":
                continue
            parts = f.parts
            if parts[0] in ("stdlib", "stubs"):
                dest = out.joinpath(*parts)  # already typeshed layout
            else:
                dest = out / "stdlib" / Path(*parts)  # a board module (machine, hashlib, ...)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(str(dist.locate_file(f))), dest)
    # mypy only resolves stdlib modules listed in VERSIONS: add the board's own modules
    versions = out / "stdlib" / "VERSIONS"
    listed = {line.split(":")[0].strip() for line in versions.read_text().splitlines() if ":" in line}
    present = {p.stem if p.is_file() else p.name for p in (out / "stdlib").iterdir() if p.name != "VERSIONS"}
    with versions.open("a") as listing:
        listing.write("\n# fleetpin: modules of the ESP32 stubs\n")
        listing.writelines(f"{name}: 3.0-\n" for name in sorted(present - listed))
    for rel, old, new, why in STUB_FIXES:
        path = out / rel
        text = path.read_text()
        if old not in text:
            raise FleetpinError(f"stub fix no longer applies ({why}): {old!r} not in {rel}",
                                hint="check the new stub release and update STUB_FIXES in tools/check_device.py")
        path.write_text(text.replace(old, new))


def own_classes(files: list[Path]) -> set[str]:
    return {n.name for f in files for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.ClassDef)}


def known_false_positive(error: dict[str, object], classes: set[str]) -> str | None:
    """Why an error is not about the board, or None to keep it."""
    message, code = str(error["message"]), error["code"]
    if code == "misc" and message.startswith("All conditional function variants must have identical signatures"):
        line = Path(str(error["file"])).read_text().splitlines()[int(str(error["line"])) - 1]
        if re.match(r"\s*def const\(", line):
            return "the CPython fallback for micropython.const"
    m = re.match(r'"(\w+)" has no attribute', message)
    if code == "attr-defined" and m and m.group(1) in classes:
        return "attributes of the device code's own classes (set outside __init__; the tests cover them)"
    if code == "call-overload" and re.search(r'of "__\w+__" of "(list|dict|bytearray|tuple|set)"', message):
        return "element types mypy inferred for an unannotated container"
    if '"Any | None"' in message:
        return "an attribute set to None in __init__ and filled later (mypy cannot see the order)"
    return None


def type_check(files: list[Path], cache_dir: Path) -> bool:
    from mypy import api

    typeshed = build_typeshed()
    stdout, stderr, _ = api.run([
        "--config-file", str(CONFIG), "--custom-typeshed-dir", str(typeshed),
        "--cache-dir", str(cache_dir), "--output", "json", *map(str, files),
    ])
    if stderr.strip():
        print(stderr.strip())
        return False
    classes = own_classes(files)
    kept, ignored = [], 0
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        error = json.loads(line)
        if error["severity"] != "error":
            continue
        if known_false_positive(error, classes):
            ignored += 1
            continue
        kept.append(error)
    for e in kept:
        hint = f"\n    {e['hint']}" if e.get("hint") else ""
        print(f"{e['file']}:{e['line']}: error: {e['message']}  [{e['code']}]{hint}")
    verdict = "ok" if not kept else f"{len(kept)} errors"
    print(f"type check: {len(files)} files against the ESP32 stubs: {verdict} ({ignored} known false positives ignored)")
    return not kept


def cross_compile(files: list[Path], root: Path, out_dir: Path) -> bool:
    ok = True
    for arch in ARCHS:
        arch_ok = True
        for src in files:
            rel = src.relative_to(root)
            dest = out_dir / arch / rel.with_suffix(".mpy")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                dest.write_bytes(agent_files.compile_mpy(src, rel.as_posix(), march=arch))
            except FleetpinError as e:
                print(f"{arch}: {e}")
                arch_ok = False
        print(f"mpy-cross -march={arch}: {len(files)} files -> {out_dir / arch}/: " + ("ok" if arch_ok else "FAILED"))
        ok = ok and arch_ok
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", nargs="+", type=Path, help="check these files instead of device/")
    parser.add_argument("--no-compile", action="store_true", help="type check only")
    args = parser.parse_args(argv)
    files = [p.resolve() for p in args.files] if args.files else device_sources()
    if not files:
        print("no device sources found under device/pinagent")
        return 1
    root = DEVICE if not args.files else Path(os.path.commonpath([p.parent for p in files]))
    try:
        if args.files:  # ad-hoc files: keep build/ (mypy cache, .mpy) for the real device code
            with tempfile.TemporaryDirectory() as tmp:
                ok = type_check(files, Path(tmp) / "mypy-cache")
                ok = (args.no_compile or cross_compile(files, root, Path(tmp))) and ok
        else:
            ok = type_check(files, BUILD / "mypy-cache-device")
            ok = (args.no_compile or cross_compile(files, root, BUILD / "mpy")) and ok
    except FleetpinError as e:
        print(f"error: {e}" + (f"\n  next: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
