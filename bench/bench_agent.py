"""The agent's RAM as the board would hold it, and its boot time, on real MicroPython (the unix
port, -X heapsize: a hard heap, garbage collected as on a board), with ESP32 estimates.

A wake (bench/mp_agent_life.py, on MicroPython; this process is the host): the board's own
main.py boots the agent from flash (a 3-domain bundle with its CA certificates; the config names
the fleet), serves the listening window, and runs the application: a pinned connection to a
loopback TLS server (fleetpin.sim.tlsserver, 127.0.0.1) that serves a 3-certificate chain the
bundle pins, and one to a server whose chain it does not pin (refused: a report written). With a
host, the window carries a real session from fleetpin.field.transport (the CLI's own code) over
the process's stdin/stdout: HELLO, PING, IDENTIFY, one full update (the next version; the device
verifies its signature), the reports read and acknowledged, REBOOT. Scenarios (SCENARIOS):
  - a host updates at every wake: ROUNDS processes one after the other on one flash (a process
    starts as a board after reset), each one wake;
  - no host: one wake, then the application ROUNDS times (the steady state);
  - ROUNDS wakes in one process, keeping what each loaded (and the strings MicroPython interned,
    which it never frees): more than a board holds, the worst case.
The live heap must not grow between rounds or application runs (after the first, a warm-up).

With $FLEETPIN_MICROPYTHON_FROZEN set to a unix-port `micropython` built with device/manifest.py
frozen into it (README: "Boot and deep sleep"), the lives and the boot also run
on it, the board's filesystem then without pinagent: what freezing the agent into a board's
firmware buys.

For each: the smallest -X heapsize from which the life passes (bisection in 1 KB steps, then
checked upwards: near it the outcome is not monotonic), with the agent loaded from .mpy (as
`fleetpin image build` installs it) and from source. This port is 64-bit: the same modules take
more heap than on the 32-bit ESP32. The ratio is measured in the same run on the same modules
(.mpy): live heap here / live heap on the 32-bit WebAssembly VM (bench_heap_runtimes). ESP32
estimate = heap here / ratio. Targets: the whole life within 64 KB (ESP32 estimate) from .mpy,
and passing here under -X heapsize of 64 KB x the ratio.

Boot time: a wake with nothing loaded (main.py compiled, pinagent loaded from .mpy, the agent
booted from flash, the first pin decision on a 3-certificate chain: the verify callback's work for
a handshake, not the handshake itself); the same with every module loaded (the agent's own work);
the decision alone; and the floor under any arrangement of the rest: loading nothing but the code
the decision runs (pinagent.connect with der, policy and pins). The flash is LittleFS on a RAM block device, after a first boot (which kept the
bundle decoded: pinagent.installed), as a board's later wakes find it; the flash of the life runs
is a folder after a first boot on CPython (write_flash). Timed here and estimated for an ESP32 at 240 MHz with the pidigits calibration
of bench_ecdsa (+-2x; reading .mpy files from the board's flash is not modelled). Target: at most
50 ms.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

from bench import TARGET_KB
from bench.bench_bundle import FLEET
from bench.bench_ecdsa import ESP32_PIDIGITS_MS, PI_SOURCE, PIDIGITS
from fleetpin import agent_files
from fleetpin.bundles.build import BundleSource, build_bundle, canonical_json
from fleetpin.field.transport import Transport
from fleetpin.pki.keys import public_info, signer_set_obj
from fleetpin.pki.signing import LocalKeySigner
from fleetpin.sim.pki import Pki, make_pki
from fleetpin.sim.tlsserver import TlsServer
from fleetpin.vm import unix
from pinagent import store as dev_store

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "mp_agent_life.py"
HOST = "api.bench.test"
NAMESPACE = "fleetpin-bench-bundle"
ROUNDS = 20
FIRST = 1  # the version in flash at the start
WINDOW_MS = 5000  # with a host: the session starts within it (then runs until REBOOT)
STEADY_WINDOW_MS = 50  # without a host: the window passes (main.py's is 3 s; only the wait differs)
LIFE_TIMEOUT = 300.0
FROZEN_ENV = "FLEETPIN_MICROPYTHON_FROZEN"  # a unix port with the agent frozen: measured too, if set
GROWTH_SLACK = 256  # bytes the live heap may differ between rounds (the log's counters, version digits)

# The board resolves names by DNS; here every name is 127.0.0.1 (the servers' only address), through a
# `socket` module put first on the path (the real one stays reachable as `usocket`): TLS still sees the name.
SOCKET_SHIM = """from usocket import *
import usocket as _real


def getaddrinfo(host, port, *args):
    return _real.getaddrinfo("127.0.0.1", port, *args)
"""


# ---- the bundles, the flash, the servers


def _signer() -> tuple[LocalKeySigner, bytes]:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.derive_private_key(0xB0B0CAFE, ec.SECP256R1())
    signer = LocalKeySigner(key, public_info(key.public_key(), "bench", "production"))
    other = ec.derive_private_key(0xB0B0CAFF, ec.SECP256R1())
    signers = canonical_json(signer_set_obj([signer.info, public_info(other.public_key(), "vault", "production")]))
    return signer, signers


def make_bundles(count: int) -> tuple[list[bytes], bytes, Pki]:
    """Versions FIRST..FIRST+count-1 of one 3-domain bundle (primary and backup pins each, the
    root and intermediate CA certificates), the signer set, and the PKI of HOST."""
    signer, signers = _signer()
    domains = []
    for i, host in enumerate((HOST, "telemetry.bench.test", "ota.bench.test")):
        pki = make_pki(host, namespace=NAMESPACE)
        domains.append({"host": host, "include_subdomains": i == 1, "enforce": True, "expires": 4102444800,
                        "on_expiry": "fallback", "pins": [{"pin": pki.leaf.pin, "label": "primary"},
                                                          {"pin": pki.backup_leaf.pin, "label": "backup"}]})
    pki = make_pki(HOST, namespace=NAMESPACE)
    source = BundleSource(policy={"domains": domains}, ca_certs=[pki.root.der, pki.intermediate.der])
    issued = int(time.time()) - 60
    bundles = [build_bundle(source, fleet=FLEET, version=v, issued=issued, development=False, signers=[signer])
               for v in range(FIRST, FIRST + count)]
    return bundles, signers, pki


def write_flash(folder: Path, bundle: bytes, signers: bytes) -> None:
    """The flash of a provisioned board that has booted once (what its first boot writes too:
    the trust record, and the bundle decoded, pinagent.installed), by the agent itself on CPython."""
    folder.mkdir(parents=True)
    (folder / "signers.bin").write_bytes(signers)
    (folder / "bundle.bin").write_bytes(dev_store.encode_slot(signers, bundle))
    (folder / "config.json").write_text(json.dumps({"fleet": FLEET}))
    from pinagent.agent import Agent

    fs = _FolderFs(folder)
    agent = Agent(dev_store.FS(fs, fs.open), lambda: None, "bench-1", FLEET, None)
    assert agent.boot().mode == dev_store.MODE_OK and (folder / dev_store.INDEX).exists()


class _FolderFs:
    """The os and open() the store takes, with /fleetpin mapped to a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _p(self, path: str) -> str:
        return str(self.folder / path.removeprefix(dev_store.ROOT).lstrip("/"))

    def open(self, path: str, mode: str) -> Any:
        return open(self._p(path), mode)

    def stat(self, path: str) -> Any:
        return os.stat(self._p(path))

    def listdir(self, path: str) -> list[str]:
        return os.listdir(self._p(path))

    def rename(self, a: str, b: str) -> None:
        os.rename(self._p(a), self._p(b))

    def remove(self, path: str) -> None:
        os.remove(self._p(path))

    def mkdir(self, path: str) -> None:
        os.mkdir(self._p(path))

    def statvfs(self, path: str) -> Any:
        return os.statvfs(self._p(path))


def board_tree(dest: Path, kind: str) -> Path:
    """The board's filesystem as `fleetpin image build` installs it (kind "mpy": pinagent as .mpy,
    main.py as source), with the agent as source ("source"), or without it or main.py ("frozen":
    the firmware has both, and runs its frozen main.py without compiling it); plus the driver
    (.mpy) and the socket shim."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in agent_files.read_manifest():
        if kind == "frozen":
            continue  # device/manifest.py freezes main.py too; and an empty pinagent/ would shadow the frozen one
        target = dest / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.in_package and kind == "mpy":
            target.with_suffix(".mpy").write_bytes(agent_files.compiled(f, "xtensawin"))
        else:
            shutil.copyfile(f.source, target)
    (dest / "mp_agent_life.mpy").write_bytes(agent_files.compile_mpy(DRIVER, "mp_agent_life.py"))
    (dest / "socket.py").write_text(SOCKET_SHIM)
    return dest


# ---- the host end: the CLI's transport over the process's pipes


class _Pipe:
    """What fleetpin.field.transport.Transport needs of a serial port, over a process's pipes."""

    baudrate = 115200
    in_waiting = 0

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._in = proc.stdin
        self._fd = proc.stdout.fileno()

    def write(self, data: bytes) -> int:
        self._in.write(data)
        self._in.flush()
        return len(data)

    def read(self, n: int = 1, timeout: float = 0.005) -> bytes:
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return b""
        data = os.read(self._fd, 4096)
        if not data:
            raise OSError("the board's process ended")
        return data

    def wait_announce(self, timeout: float) -> None:
        """Reads up to the end of the device's start-up announcement (one frame: two flags)."""
        flags = 0
        end = time.monotonic() + timeout
        while flags < 2:
            if time.monotonic() > end:
                raise TimeoutError("no announcement from the board")
            flags += self.read(timeout=0.05).count(0x7E)


def _session(pipe: _Pipe, bundle: bytes) -> None:
    pipe.wait_announce(60)
    t = Transport(pipe, "bench-pipe", timeout=60)
    t.connect()
    t.identify()
    answer = t.upload(bundle)
    if not answer.get("installed"):
        raise RuntimeError(f"update not installed: {answer}")
    log = t.read_all("reports")
    total = json.loads(log.split(b"\n", 1)[0])["total"]
    t.call(t.client.ack_reports(total), "ACK_REPORTS")
    t.call(t.client.reboot(), "REBOOT")


def run_life(tree: Path, flash0: Path, job: dict[str, Any], heap: int, bundles: list[bytes], update: bool,
             wakes: int = 1) -> tuple[bool, dict[str, Any]]:
    """A life under -X heapsize=heap bytes: `wakes` processes one after the other (each a wake
    from reset) on one flash, each running job["rounds"] rounds. (passed, figures of the FP
    lines; "growth": how much the live heap rose across rounds and application runs)."""
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fleetpin-life-") as tmp:
        flash = Path(tmp) / "flash"
        shutil.copytree(flash0, flash)
        for w in range(wakes):
            first = FIRST + (w * job["rounds"] if update else 0)
            ok, figures = _run_process(tree, Path(tmp), {**job, "flash": str(flash), "update": update, "first": first,
                                                         "window_ms": WINDOW_MS if update else STEADY_WINDOW_MS},
                                       heap, bundles[first - FIRST:])
            if not ok:
                return False, figures
    return True, figures


def _run_process(tree: Path, tmp: Path, job: dict[str, Any], heap: int, bundles: list[bytes]) -> tuple[bool, dict[str, Any]]:
    (tmp / "mp_agent_job.json").write_text(json.dumps(job))
    env = {**os.environ, "MICROPYPATH": os.pathsep.join([str(tree), unix.FROZEN])}
    proc = subprocess.Popen([str(unix.executable()), "-X", f"heapsize={heap}", "-c", "import mp_agent_life"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp, env=env)
    lines: list[str] = []
    assert proc.stderr is not None
    err = proc.stderr
    reader = threading.Thread(target=lambda: lines.extend(x.decode(errors="replace") for x in err), daemon=True)
    reader.start()
    pipe = _Pipe(proc)
    host_error = None
    try:
        if job["update"]:
            for i in range(job["rounds"]):
                _session(pipe, bundles[i + 1])
        deadline = time.monotonic() + LIFE_TIMEOUT
        try:
            while time.monotonic() < deadline:
                pipe.read(timeout=0.05)  # the announcements of a life without a host, until it ends
        except OSError:
            pass
    except Exception as e:  # the board died (out of heap) or refused: this heap is too small
        host_error = f"{type(e).__name__}: {e}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(5)
    figures = _figures(lines)
    figures["host_error"] = host_error
    figures["output"] = "".join(lines[-20:])
    passed = proc.returncode == 0 and host_error is None and "done" in figures
    if passed:
        figures["growth"] = max(_growth(figures["round"]), _growth(figures.get("app", [])))
        passed = figures["growth"] <= GROWTH_SLACK
    return passed, figures


def _growth(values: list[int]) -> int:
    """How much the live heap rose after the first value: the first run is a warm-up (the strings
    it is the first to intern may need a new, larger pool of them: a step of several KB, once)."""
    return max(values[1:]) - values[1] if len(values) > 1 else 0


def _figures(lines: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in lines:
        parts = line.split()
        if len(parts) < 2 or parts[0] != "FP":
            continue
        tag = parts[1]
        if tag in ("booted", "served", "app", "round"):
            out.setdefault(tag, []).append(int(parts[3]))
        elif tag == "start":
            out["start"] = int(parts[2])
        elif tag == "done":
            out["done"] = int(parts[2])
        elif tag == "failed":
            out["failed"] = " ".join(parts[2:])
    return out


def smallest_heap(passes: Any, low: int, high: int, step: int = 1024, margin: int = 3) -> tuple[int, int] | None:
    """(found, settled): the smallest heap (bytes, a multiple of step) passes(heap) holds for, by
    bisection; and the smallest from which it holds at every step up to `margin` steps more,
    checked upwards from there (near the threshold the outcome is not monotonic: where the
    allocator finds room for a block depends on everything allocated and freed before it). None
    above high."""
    if not passes(high):
        return None
    while high - low > step:
        mid = (low + high) // 2 // step * step
        if passes(mid):
            high = mid
        else:
            low = mid
    heap = high  # passes
    k = 1
    while k <= margin:
        if passes(heap + k * step):
            k += 1
            continue
        heap += (k + 1) * step  # past the one that failed: the next that passes
        while not passes(heap):
            heap += step
        k = 1
    return high, heap


# ---- the ratio: the same modules here and on the 32-bit VM


def module_ratio(bundle: bytes, signers: bytes) -> tuple[float, int, int]:
    """(unix / VM, unix bytes, VM bytes): every pinagent module from .mpy, live after import."""
    from bench.bench_heap_runtimes import MODULES, unix_steps, vm_steps

    shipped = {f.name for f in agent_files.read_manifest()}
    modules = [m for m in MODULES if m.replace(".", "/") + ".py" in shipped or m.replace(".", "/") + "/__init__.py"
               in shipped]
    now = int(time.time())
    with tempfile.TemporaryDirectory(prefix="fleetpin-flash-") as tmp:
        flash = Path(tmp)
        slot = dev_store.encode_slot(signers, bundle)
        (flash / "signers.bin").write_bytes(signers)
        (flash / "bundle.bin").write_bytes(slot)
        u = unix_steps(True, flash, now, modules)
        v = vm_steps(True, {"/fleetpin/signers.bin": signers, "/fleetpin/bundle.bin": slot}, now, modules)
    last = modules[-1]
    return (u[last] - u["baseline"]) / (v[last] - v["baseline"]), u[last] - u["baseline"], v[last] - v["baseline"]


# ---- boot time

# The board's flash: LittleFS (vfs.VfsLfs2, as the ESP32 port mounts it) on a block device in RAM,
# holding the files of the folder `flash`; the first boot in the setup writes what a board's first
# boot writes (bundle.idx, pinagent.installed), so the timed wakes are the board's later ones.
BOOT_SETUP = """\
import gc, sys, vfs, os
class _Ram:
    def __init__(self, blocks):
        self.data = bytearray(blocks * 4096)
    def readblocks(self, n, buf, off=0):
        buf[:] = self.data[n * 4096 + off:n * 4096 + off + len(buf)]
    def writeblocks(self, n, buf, off=None):
        at = n * 4096 + (off or 0)
        self.data[at:at + len(buf)] = buf
    def ioctl(self, op, arg):
        return (32 if op == 4 else 4096) if op in (4, 5) else 0
_dev = _Ram(32)
vfs.VfsLfs2.mkfs(_dev)
vfs.mount(vfs.VfsLfs2(_dev), '/fleetpin')
for _n in os.listdir('flash'):
    with open('flash/' + _n, 'rb') as _f, open('/fleetpin/' + _n, 'wb') as _g:
        _g.write(_f.read())
CERTS = [open('c%%d.der' %% i, 'rb').read() for i in range(3)]
%s
def _purge():
    for name in list(sys.modules):
        if name == 'main' or name.startswith('pinagent'):
            del sys.modules[name]
    gc.collect()
_purge()
import main
from pinagent.io import console
LAST = console.board_agent()
assert LAST.state.mode == 'ok', LAST.state.problems
assert 'bundle.idx' in os.listdir('/fleetpin'), os.listdir('/fleetpin')
"""

_IMPORTS = "import main\nfrom pinagent.io import board, console\nimport pinagent.agent, pinagent.io.flash, pinagent.io.tls\n"
_DECISION = ("ch, _ = ag.pin_check(%r, 443)\nfor d in (2, 1, 0):\n    ch.on_cert(CERTS[d], d)\n"
             "assert ch.verdict.allowed, ch.verdict.reason" % HOST)
BOOT_BLOCKS = {
    # a wake (from deep sleep or reset): nothing loaded; main.py compiled, the agent's modules
    # loaded (those its boot and first decision load later too), booted from flash, the decision
    "wake": _IMPORTS + "ag = board.start()\n" + _DECISION,
    # the same with every module loaded already (and none forgotten): the agent's own work
    "work": "global LAST\nag = LAST = console.board_agent()\n" + _DECISION,
    "decision": "ag = LAST\n" + _DECISION,  # one decision
    # the floor: loading nothing but the code a pin decision runs (connect and its imports: der,
    # policy, pins), as a wake must before its first decision, however the rest is arranged
    "decision_code": "import pinagent.connect",
    "pi": "pi_digits(%d)" % PIDIGITS,  # the calibration
}
# untimed, before each call: a wake starts with nothing loaded; the others with everything
_LOADED = ("from pinagent.io import console\nimport pinagent.agent\npinagent.agent.forget = lambda *names: None\n"
           "for _m in %r:\n    try:\n        __import__(_m)\n    except ImportError:\n        pass\n"
           % ["pinagent.installed", "pinagent.bundle", "pinagent.policy_load", "pinagent.connect", "pinagent.der",
              "pinagent.pins", "pinagent.reports"])
BOOT_PREPARE = {"wake": "_purge()", "work": _LOADED, "decision": _LOADED, "decision_code": "_purge()"}


def boot_times(bundle: bytes, signers: bytes, pki: Pki, frozen: bool = False) -> dict[str, float]:
    """Median ms per block on the unix port (bench.unix_timing), with the board's files (without
    pinagent's and main.py when the firmware has them frozen)."""
    from bench.unix_timing import median_ms

    files = {} if frozen else {f"lib/{f.name[:-3]}.mpy" if f.in_package else f.name: (
        agent_files.compiled(f, "xtensawin") if f.in_package else f.source.read_bytes()) for f in agent_files.read_manifest()}
    files["flash/signers.bin"] = signers
    files["flash/bundle.bin"] = dev_store.encode_slot(signers, bundle)
    files["flash/config.json"] = json.dumps({"fleet": FLEET}).encode()
    for i, der in enumerate(pki.chain_der("leaf", with_root=True)):
        files[f"c{i}.der"] = der
    setup = "import sys\nsys.path[:0] = ['', 'lib']\n" + BOOT_SETUP % PI_SOURCE
    return median_ms(setup, BOOT_BLOCKS, files, rounds=15, heap_kb=1024, collect=True, prepare=BOOT_PREPARE,
                     with_agent=not frozen)


# ---- the report


# (label, update, wakes: processes one after the other, rounds per process, application runs per round)
SCENARIOS = (
    ("a host updates at every wake", True, ROUNDS, 1, 1),
    ("no host: one wake, then the app", False, 1, 1, ROUNDS),
    ("%d wakes in one process, modules kept" % ROUNDS, True, 1, ROUNDS, 1),
)


def frozen_runtime() -> Path | None:
    """$FLEETPIN_MICROPYTHON_FROZEN: a unix-port `micropython` built with device/manifest.py frozen
    (README, "Boot and deep sleep"), or None. Refused if it has no frozen pinagent and main.py."""
    path = os.environ.get(FROZEN_ENV)
    if not path:
        return None
    done = subprocess.run([path, "-c", "import sys\nsys.path[:] = ['.frozen']\nimport main, pinagent.agent, pinagent.io.board"],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"${FROZEN_ENV}={path}: no frozen pinagent and main.py in it ({done.stderr.strip()[-200:]})")
    return Path(path).resolve()  # the lives run in other folders


def _lives(trees: dict[str, Path], flash0: Path, bundles: list[bytes], ports: tuple[int, int], ratio: float,
           budget: int) -> None:
    for label, update, wakes, rounds, app_rounds in SCENARIOS:
        job = {"rounds": rounds, "app_rounds": app_rounds, "host": HOST, "good": ports[0], "bad": ports[1]}
        for kind, tree in trees.items():
            name = f"{label}, {kind}"
            ok, fig = run_life(tree, flash0, job, 1024 * 1024, bundles, update, wakes)
            if not ok:
                print(f"   {name:48} FAILED with a 1 MB heap: {fig.get('failed') or fig.get('host_error')}"
                      f"\n{fig['output']}")
                continue

            def passes(heap: int, tree: Path = tree, update: bool = update, n: int = min(wakes, 2)) -> bool:
                return run_life(tree, flash0, job, heap, bundles, update, n)[0]  # noqa: B023

            found = smallest_heap(passes, 16 * 1024, 512 * 1024)
            peak = settled = None
            if found is not None:
                peak, settled = found
                while wakes > 2 and not run_life(tree, flash0, job, settled, bundles, update, wakes)[0]:
                    settled += 1024  # the quick search ran 2 wakes: all of them must pass
            at_budget = run_life(tree, flash0, job, budget, bundles, update, wakes)[0]
            live = max(fig["app"]) - fig["start"]
            if peak is None or settled is None:
                text = "  > 512 KB"
            else:
                text = (f"{peak / 1024:6.0f} KB {peak / 1024 / ratio:7.1f} KB  {settled / 1024:5.0f} KB "
                        f"{settled / 1024 / ratio:6.1f} KB")
            print(f"   {name:48} {text}  {live / 1024:7.1f} KB (+{fig['growth']} B)  "
                  f"{'passes' if at_budget else 'FAILS'}", flush=True)


def _boot_report(times: dict[str, float], loading: str) -> None:
    scale = ESP32_PIDIGITS_MS / times["pi"]
    rows = (("a wake to the first pin decision (3-certificate chain)", times["wake"]),
            (f"  loading: {loading}", times["wake"] - times["work"]),
            ("  the agent's boot and the first pin decision", times["work"]),
            ("  of which the pin decision", times["decision"]),
            ("floor: the decision's code alone (connect, der, policy, pins)", times["decision_code"]))
    for label, ms in rows:
        print(f"   {label:60} {ms:7.2f} ms  ESP32 ~{ms * scale:6.0f} ms")


def run() -> None:
    try:
        unix.executable()
    except Exception as e:
        print(f"   skipped: no MicroPython unix port here ({e})")
        return
    frozen = frozen_runtime()
    bundles, signers, pki = make_bundles(ROUNDS + 1)
    ratio, u_mod, v_mod = module_ratio(bundles[0], signers)
    print(f"   ratio 64-bit/32-bit, every pinagent module from .mpy: {u_mod / 1024:.1f} KB here, "
          f"{v_mod / 1024:.1f} KB on the 32-bit VM: {ratio:.2f}")
    budget = int(TARGET_KB * 1024 * ratio)
    with tempfile.TemporaryDirectory(prefix="fleetpin-bench-agent-") as tmp_name:
        tmp = Path(tmp_name)
        flash0 = tmp / "flash0"
        write_flash(flash0, bundles[0], signers)
        good = TlsServer(pki.chain_pem("leaf"), pki.leaf.key_pem)
        bad = TlsServer(pki.chain_pem("renewed_leaf"), pki.renewed_leaf.key_pem)
        with good, bad:
            print(f"   smallest -X heapsize the life passes in (1 KB steps), ESP32 estimate = / {ratio:.2f}; "
                  f"target {TARGET_KB} KB = {budget / 1024:.1f} KB here (wakes: processes from reset, one after the other)")
            print(f"   {'':48} {'passes in':>19}  {'and from (+3 KB)':>17}  {'live, app':>16}  at {budget // 1024} KB")
            print(f"   {'':48} {'here':>8} {'ESP32 est.':>10}  {'here':>5} {'ESP32 est.':>10}")
            ports = (good.port, bad.port)
            _lives({k: board_tree(tmp / f"tree-{k}", k) for k in ("mpy", "source")}, flash0, bundles, ports, ratio,
                   budget)
            if frozen is None:
                print(f"   frozen: not measured (set ${FROZEN_ENV} to a unix port built with device/manifest.py frozen)")
            else:
                print(f"   frozen: {frozen} (the agent as device/ was when it was built)")
                with mock.patch.dict(os.environ, {unix.ENV_OVERRIDE: str(frozen)}):
                    _lives({"frozen": board_tree(tmp / "tree-frozen", "frozen")}, flash0, bundles, ports, ratio, budget)
    times = boot_times(bundles[0], signers, pki)
    print(f"   boot time here (median ms) and ESP32 @240 MHz estimate (x{ESP32_PIDIGITS_MS / times['pi']:.1f}: pidigits "
          f"{times['pi']:.2f} ms here; +-2x; reading .mpy files from the board's flash not modelled); target 50 ms:")
    _boot_report(times, "main.py compiled, the agent's modules (.mpy)")
    if frozen is not None:
        with mock.patch.dict(os.environ, {unix.ENV_OVERRIDE: str(frozen)}):  # fleetpin.vm.unix runs it
            times = boot_times(bundles[0], signers, pki, frozen=True)
        print(f"   the same with the agent frozen into the firmware (pidigits {times['pi']:.2f} ms there):")
        _boot_report(times, "the frozen main.py and modules run")
