"""Provisioning stations: flash a verified image onto many boards at once and record every
attempt.

Per station (a thread each), esptool runs as a separate PROCESS (`python -m esptool`: esptool is
GPL-2.0+, so it stays a separate program, and its process-wide logger stays per board):
  - first `read-mac` (staying in the bootloader): the base MAC is the board's identity, and with
    a registry the station claims the board by it before writing anything (fleetpin.line.registry:
    two stations sharing a registry never both write one board; a board confirmed with this
    image, here or at another station, is skipped: nothing is written, not even the filesystem
    the agent has written its state to since, unless force). The claim is renewed while the
    station works, moved to written after the verified write, to confirmed after the agent
    check, or to failed with the reason;
  - then one session writes: `--chip <board's chip>` (esptool refuses another chip right after
    connecting); `write-flash --flash-size keep` (esptool detects the real flash size and
    refuses, before writing anything, a region that does not fit; `keep` also leaves the
    bootloader header as `image build` set it, so the bytes on flash are exactly the manifest's,
    and a larger chip is fine: ESP-IDF uses the header's size, which is also where the
    filesystem ends); `--skip-flashed` (unless force: esptool compares each region's MD5 on the
    chip first and skips a region that already holds the image's bytes); each written region
    is verified by MD5 (esptool 5 always does); `--after hard-reset` boots the new firmware.
Then `confirm(port, expected_bundle_digest)` checks the agent booted with the right bundle; what
it returns (the agent's IDENTIFY answer) is kept in the result. Virtual stations (a mock ROM
bootloader whose flash then boots the agent) have their own confirm: fleetpin.sim.station.

Transient serial errors (port busy or gone, lost packets) are retried with exponential
backoff; refusals (wrong chip, flash too small) are not. Every attempt, whatever the outcome,
goes to the registry.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fleetpin.errors import FleetpinError
from fleetpin.line.image import LoadedImage
from fleetpin.line.registry import BUSY, DEFAULT_LEASE_S, SKIP, Attempt, Claim, ClaimLost, Registry
from fleetpin.times import iso8601

RESULT_OK = "provisioned"
RESULT_SAME = "already-provisioned"
RESULT_FAILED = "failed"

_MAC = re.compile(r"^MAC:\s+([0-9a-f]{2}(?::[0-9a-f]{2}){5})", re.IGNORECASE)
_CHIP = re.compile(r"^(?:Chip type|Chip is):?\s+(.+)$")
_REGION = re.compile(r"^Writing '(.+)' at (0x[0-9a-f]+)\.\.\.", re.IGNORECASE)
_PROGRESS = re.compile(r"^Writing at (0x[0-9a-f]+).*?(\d+(?:\.\d+)?)%")
_SKIPPED = re.compile(r"^'(.+)' at (0x[0-9a-f]+) already in flash, skipping write\.")
_VERIFIED = "Hash of data verified."
_FATAL = re.compile(r"^(?:ERROR: )?A (?:fatal|serial exception) error occurred: (.*)$")

# esptool messages after which trying again may work (cable, port, line noise)
TRANSIENT = (
    "could not open port",
    "serial exception",
    "failed to connect",
    "timed out waiting for packet",
    "no serial data received",
    "packet content transfer stopped",
    "invalid head of packet",
    "device disconnected",
    "device reports readiness to read but returned no data",
    "input/output error",
    "md5 of file does not match",
    "corrupt data",
    "port is busy",
    "resource busy",
)


class ConfirmFailed(FleetpinError):
    """The board was flashed but its agent did not confirm the expected bundle."""


# confirm(port, expected_bundle_digest) -> what the agent said about itself (or None); raises if wrong
Confirm = Callable[[str, str], dict[str, Any] | None]


class StationEvents(Protocol):
    def __call__(self, station: Station, event: str, detail: dict[str, Any]) -> None: ...


@dataclass
class Station:
    """One fixture slot: a name the operator knows it by, and its serial port."""

    name: str
    port: str
    # live state, for the progress display
    phase: str = "waiting"
    percent: float = 0.0
    attempt: int = 0
    mac: str | None = None

    @staticmethod
    def parse(spec: str) -> Station:
        """'PORT' or 'NAME=PORT' (e.g. slot3=/dev/ttyUSB2)."""
        name, sep, port = spec.partition("=")
        return Station(name, port) if sep and port else Station(spec, spec)


@dataclass
class StationResult:
    station: str
    port: str
    result: str
    mac: str | None
    chip: str | None
    error: str | None
    attempts: int
    started: float
    ended: float
    regions: dict[str, str] = field(default_factory=dict)  # file -> written / skipped
    agent: dict[str, Any] | None = None  # the confirm step's answer: device_id, mode, ...

    @property
    def ok(self) -> bool:
        return self.result != RESULT_FAILED

    def as_json(self) -> dict[str, Any]:
        """For `provision --json`: times in ISO 8601 (UTC), as in registry exports and receipts."""
        return asdict(self) | {"started": iso8601(self.started), "ended": iso8601(self.ended),
                               "seconds": round(self.ended - self.started, 3)}


@dataclass
class EsptoolRun:
    """What one esptool session said: identity, per-region outcome, the fatal error if any."""

    returncode: int = 0
    mac: str | None = None
    chip: str | None = None
    regions: dict[str, str] = field(default_factory=dict)
    current: str | None = None  # region being written when it stopped
    current_percent: float = 0.0
    error: str | None = None
    tail: list[str] = field(default_factory=list)

    @property
    def transient(self) -> bool:
        e = (self.error or "").lower()
        return any(t in e for t in TRANSIENT)


@dataclass
class ProvisionOptions:
    force: bool = False
    confirm: Confirm | None = None  # None: skip (--no-confirm)
    retries: int = 3  # extra attempts after a transient error
    backoff: float = 0.5  # seconds before the first retry, doubled each time
    baud: int | None = None  # None: the board's max_baud
    esptool: Sequence[str] = (sys.executable, "-m", "esptool")
    operator: str = "unknown"
    session_timeout: float = 600.0
    host: str = field(default_factory=socket.gethostname)  # with the port, names the station in claims
    lease: float = DEFAULT_LEASE_S  # a claim this station stops renewing is free after this long


def esptool_command(opts: ProvisionOptions, image: LoadedImage, port: str) -> list[str]:
    board = image.board
    cmd = [
        *opts.esptool,
        "--chip",
        board.chip,
        "--port",
        port,
        "--baud",
        str(opts.baud or board.max_baud),
        "--after",
        "hard-reset",
        "write-flash",
        "--flash-size",
        "keep",
    ]
    if not opts.force:
        cmd.append("--skip-flashed")
    for r in image.regions:
        cmd += [f"0x{int(r['offset']):x}", str(image.directory / str(r["file"]))]
    return cmd


def _lines(stream: Any) -> Any:
    """Lines of a byte stream split on CR or LF (progress bars redraw with CR)."""
    buf = b""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        buf += chunk
        parts = re.split(rb"[\r\n]", buf)
        buf = parts.pop()
        for p in parts:
            if p.strip():
                yield p.decode("utf-8", "replace").strip()
    if buf.strip():
        yield buf.decode("utf-8", "replace").strip()


def run_esptool(cmd: list[str], on_line: Callable[[EsptoolRun, str], None], timeout: float) -> EsptoolRun:
    run = EsptoolRun()
    env = {"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "NO_COLOR": "1", "TERM": "dumb"}
    import os

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=os.environ | env)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None
        for line in _lines(proc.stdout):
            run.tail = (run.tail + [line])[-8:]
            if m := _MAC.match(line):
                run.mac = m.group(1).lower()
            elif (m := _CHIP.match(line)) and run.chip is None:
                run.chip = m.group(1).strip()
            elif m := _REGION.match(line):
                run.current, run.current_percent = Path(m.group(1)).name, 0.0
            elif m := _PROGRESS.match(line):
                run.current_percent = float(m.group(2))
            elif m := _SKIPPED.match(line):
                run.regions[Path(m.group(1)).name] = "skipped"
                run.current = None
            elif line == _VERIFIED and run.current:
                run.regions[run.current] = "written"
                run.current = None
            elif m := _FATAL.match(line):
                run.error = m.group(1).strip()
            on_line(run, line)
        run.returncode = proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if run.returncode != 0 and run.error is None:
        run.error = f"esptool exited with {run.returncode}: " + (run.tail[-1] if run.tail else "no output")
    return run


class OtherBoard(EsptoolRun):
    """A retry found a different board on the station's port: never transient."""

    @property
    def transient(self) -> bool:
        return False


def _same_board(opts: ProvisionOptions, image: LoadedImage, station: Station, on_line: Callable[[EsptoolRun, str], None]) -> EsptoolRun:
    """Reads the MAC of the board now on the station's port (staying in the bootloader); an
    error run if it is not the board the first attempt saw."""
    cmd = [*opts.esptool, "--chip", image.board.chip, "--port", station.port, "--after", "no-reset", "read-mac"]
    run = run_esptool(cmd, on_line, opts.session_timeout)
    if run.error is None and run.mac is None:
        run.error = f"esptool read-mac printed no MAC for the board on {station.port}"
    if run.error is None and run.mac is not None and run.mac != station.mac:
        other = OtherBoard()
        other.mac = station.mac
        other.error = (f"another board (MAC {run.mac}) answers on {station.port} now, not {station.mac}: "
                       "not flashed; put the board back, or provision the new one as a new attempt")
        return other
    return run


def _reason(run: EsptoolRun, image: LoadedImage) -> str:
    """An operator-readable reason for a failed session."""
    e = run.error or "unknown error"
    if m := re.search(r"This chip is ([^,\s]+), not ([^.,\s]+)", e):
        return f"wrong chip: the board is an {m.group(1)}, the image is for {m.group(2)} ({image.board.name})"
    if m := re.search(r"will not fit in (\d+) bytes of flash", e):
        have = int(m.group(1)) // (1024 * 1024)
        return f"flash too small: the board has {have}MB, the image needs {image.manifest['flash_size_label']}"
    if run.current is not None and run.current_percent >= 100:  # all sent: its end or MD5 check failed
        return f"{run.current} written but not verified: {e}"
    if run.current is not None:
        return f"serial link lost while writing {run.current} ({run.current_percent:.0f}%): {e}"
    return e


class _LeaseKeeper:
    """Renews a station's claim on a board every third of its lease while the station works on
    it, so a long write is never taken over; `lost` says why the claim is gone (taken over after
    the database was out of reach for a whole lease), and the station stops writing."""

    def __init__(self, registry: Registry, claim: Claim, lease: float) -> None:
        self.registry, self.claim, self.lease = registry, claim, lease
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease {claim.mac}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                self.registry.renew(self.claim, self.lease)
            except ClaimLost as e:
                self.lost = str(e)
                return
            except FleetpinError:
                continue  # the database is out of reach: try again (the lease is what others go by)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def provision_station(
    station: Station,
    image: LoadedImage,
    opts: ProvisionOptions,
    registry: Registry | None,
    events: StationEvents | None = None,
) -> StationResult:
    """One station: with a registry, read the board's MAC and claim it first (a board confirmed
    with this image is skipped, a board another station is writing is left alone), then write,
    verify and confirm it, moving its claim along (written, then confirmed, or failed with the
    reason); every attempt is recorded. Without one (tests, `fleetpin sim`), just write."""

    def emit(event: str, **detail: Any) -> None:
        if events is not None:
            events(station, event, detail)

    started = time.time()
    regions = {str(r["file"]): int(r["size"]) for r in image.regions}
    total = sum(regions.values())
    result = RESULT_FAILED
    error: str | None = None
    first_error: str | None = None
    run = EsptoolRun()
    agent: dict[str, Any] | None = None
    claim: Claim | None = None
    keeper: _LeaseKeeper | None = None

    def on_line(r: EsptoolRun, line: str) -> None:
        if keeper is not None and keeper.lost:  # stop writing a board this station no longer holds
            raise ClaimLost(keeper.lost)
        station.mac = station.mac or r.mac
        if r.current:
            done = sum(regions.get(f, 0) for f in r.regions)
            station.phase = f"writing {r.current}"
            station.percent = 100.0 * (done + regions.get(r.current, 0) * r.current_percent / 100) / total
            emit("progress", region=r.current, region_percent=r.current_percent, percent=station.percent, line=line)
        elif line.startswith(("Connecting", "Connected")):
            station.phase = "connecting"
            emit("connect", line=line)
        elif line.startswith("Comparing flash contents"):
            station.phase = "comparing"
            emit("compare", line=line)

    cmd = esptool_command(opts, image, station.port)
    try:
        for attempt in range(1, opts.retries + 2):
            station.attempt = attempt
            station.phase, station.percent = "connecting", 0.0
            emit("attempt", attempt=attempt)
            # The MAC first: the registry's claim needs it before anything is written. A retry
            # reopens the port by name, and a port name can now belong to another board
            # (unplugged, and another one plugged in): check it is the same board before writing.
            run = _same_board(opts, image, station, on_line) if registry is not None or (attempt > 1 and station.mac) else EsptoolRun()
            if run.error is None and registry is not None and claim is None:
                claim = _claim(registry, station, image, opts)
                emit("claim", outcome=claim.outcome, holder=claim.holder)
                if not claim.may_write:
                    break
                keeper = _LeaseKeeper(registry, claim, opts.lease)
            if run.error is None:
                run = run_esptool(cmd, on_line, opts.session_timeout)
            station.mac = station.mac or run.mac
            if run.error is None:
                break
            reason = _reason(run, image)
            first_error = first_error or reason
            emit("error", reason=reason, transient=run.transient, attempt=attempt)
            if not run.transient or attempt > opts.retries:
                error = reason if first_error == reason else f"{first_error}; then after {attempt} attempts: {reason}"
                break
            station.phase = f"retrying ({run.error[:40]})"
            time.sleep(opts.backoff * 2 ** (attempt - 1))
        if claim is not None and claim.outcome == SKIP:
            # confirmed with this image already (here or at another station): nothing is written,
            # not even the filesystem the agent has written its state to since; the board is
            # reset out of the bootloader, as after a write, and checked like one
            run = _reset(opts, image, station, on_line)
            run.regions = {f: "skipped" for f in regions}
        elif claim is not None and claim.outcome == BUSY:
            error = f"board {claim.mac} is being provisioned at station {claim.holder} right now: not written here"
        if run.error is None and error is None:
            written = [f for f, how in run.regions.items() if how == "written"]
            missing = [f for f in regions if f not in run.regions]
            if missing:
                error = f"esptool finished without confirming {', '.join(missing)}"
            else:
                if claim is not None and claim.may_write:
                    assert registry is not None
                    registry.written(claim, opts.lease)
                result = RESULT_OK if written else RESULT_SAME
                if opts.confirm is not None:
                    station.phase = "confirming agent"
                    emit("confirm")
                    try:
                        answer = opts.confirm(station.port, image.bundle_sha256)
                        agent = answer if isinstance(answer, dict) else None
                    except Exception as e:  # a broken confirm step is a failed station, not a crash
                        result, error = RESULT_FAILED, f"agent check failed: {e}"
                if claim is not None and claim.may_write and error is None:
                    assert registry is not None
                    registry.confirmed(claim)
        elif run.error is not None and error is None:
            error = _reason(run, image)
    except ClaimLost as e:  # taken over by another station: this one must not record the board
        result, error, claim = RESULT_FAILED, f"claim lost: {e}", None
    except FleetpinError as e:  # the registry is out of reach: nothing more is written
        result, error = RESULT_FAILED, f"registry: {e}"
    finally:
        if keeper is not None:
            keeper.stop()
    if error is not None:
        result = RESULT_FAILED
        if claim is not None and claim.may_write and registry is not None:
            with contextlib.suppress(FleetpinError):  # lost or out of reach: its lease runs out
                registry.failed(claim, error)
    station.phase = result if error is None else "failed"
    station.percent = 100.0 if error is None else station.percent
    ended = time.time()
    if registry is not None:
        attempt_row = Attempt(mac=station.mac, board=image.board.name, image_id=image.image_id, bundle_sha256=image.bundle_sha256,
                              station=station.name, port=station.port, operator=opts.operator, started=started, ended=ended,
                              result=result, error=error)
        try:
            registry.record(attempt_row)
        except FleetpinError as e:
            error = f"{error}; " if error else ""
            error += f"not recorded in the registry: {e}"
            result = RESULT_FAILED
    res = StationResult(station.name, station.port, result, station.mac, run.chip, error, station.attempt, started, ended, dict(run.regions), agent)
    emit("done", result=res)
    return res


def _claim(registry: Registry, station: Station, image: LoadedImage, opts: ProvisionOptions) -> Claim:
    """Claims the board now on the station's port (its MAC was just read). The station is named
    by this host and the port: unique on the line, and the same when it retries."""
    assert station.mac is not None
    return registry.claim(station.mac, station=f"{opts.host}:{station.port}", image_id=image.image_id,
                          bundle_sha256=image.bundle_sha256, board=image.board.name, port=station.port,
                          operator=opts.operator, lease=opts.lease, force=opts.force)


def _reset(opts: ProvisionOptions, image: LoadedImage, station: Station, on_line: Callable[[EsptoolRun, str], None]) -> EsptoolRun:
    """Resets the board out of the bootloader without writing (esptool read-mac --after hard-reset)."""
    cmd = [*opts.esptool, "--chip", image.board.chip, "--port", station.port, "--after", "hard-reset", "read-mac"]
    return run_esptool(cmd, on_line, opts.session_timeout)


def provision(
    stations: Sequence[Station],
    image: LoadedImage,
    opts: ProvisionOptions,
    registry: Registry | None,
    jobs: int | None = None,
    events: StationEvents | None = None,
) -> list[StationResult]:
    """Provisions every station, `jobs` at a time (default: all at once); results in order."""
    ports = [s.port for s in stations]
    if len(set(ports)) != len(ports):
        raise FleetpinError("the same port is given twice", hint="one --port per fixture slot")
    with ThreadPoolExecutor(max_workers=max(1, jobs or len(stations))) as pool:
        futures = [pool.submit(provision_station, s, image, opts, registry, events) for s in stations]
        return [f.result() for f in futures]


# ---- the agent check -----------------------------------------------------------------------


def agent_confirm(port: str, expected_digest: str, *, baud: int = 115200, timeout: float = 15.0) -> dict[str, Any]:
    """Default confirm step: opens the port with pyserial and asks the agent IDENTIFY over
    pinagent's protocol (device/PROTOCOL.md); the bundle it runs must be `expected_digest`
    (the agent reports the SHA-256 of its installed bundle's bytes, as the manifest's
    bundle_sha256 is). Returns the IDENTIFY answer; raises ConfirmFailed with the reason."""
    import serial

    from fleetpin.protocol.client import Client, LinkFailure, RemoteError

    try:
        ser = serial.serial_for_url(port, baudrate=baud, timeout=0.005)
    except (serial.SerialException, OSError) as e:
        raise ConfirmFailed(f"cannot open {port}: {e}", hint="check the cable") from None
    try:
        # timers from the line's rate (10 bits a byte): no wait the line did not require
        client = Client(rto_ms=500, max_attempts=max(2, int(timeout / 0.5)), min_rto_ms=40, byte_ms=10000.0 / baud)
        call = client.identify()
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            if call.done:
                # A board just reset by esptool announces its start-up; if that crosses our first
                # request, the link reports "restarted": ask again (the board is up now).
                if not (isinstance(call.error, LinkFailure) and call.error.reason == "restarted" and time.monotonic() < deadline):
                    break
                call = client.identify()
            now_ms = int((time.monotonic() - t0) * 1000)
            out = client.data_to_send(now_ms)
            if out:
                ser.write(out)
            data = ser.read(max(1, ser.in_waiting))  # returns as soon as a byte is there
            now_ms = int((time.monotonic() - t0) * 1000)
            if data:
                client.receive_data(data, now_ms)
            client.tick(now_ms)
            if time.monotonic() > deadline and not call.done:
                raise ConfirmFailed(f"agent not answering on {port} after {timeout:.0f} s", hint="is main.py running? check the console output")
    except (serial.SerialException, OSError) as e:
        raise ConfirmFailed(f"serial error talking to the agent: {e}", hint="check the cable") from None
    finally:
        ser.close()
    if isinstance(call.error, LinkFailure):
        raise ConfirmFailed(f"agent not answering on {port} ({call.error.reason})", hint="is main.py running? check the console output")
    if isinstance(call.error, RemoteError) or call.error is not None:
        raise ConfirmFailed(f"agent refused IDENTIFY: {call.error}", hint="check the agent version")
    info = call.result or {}
    got = str(info.get("bundle_sha256", ""))
    if got != expected_digest:
        raise ConfirmFailed(f"agent runs bundle {got[:16] or 'none'}, expected {expected_digest[:16]}", hint="reflash with --force")
    return dict(info)
