"""The serial transport for `fleetpin device ...`: pyserial driving fleetpin.protocol.client.Client (the
sans-I/O host end of the update protocol, device/PROTOCOL.md) with real time.

    with Transport.open(port) as t:
        info = t.call(t.client.identify())
        t.upload(bundle, progress=lambda acked, total: ...)

The port is opened exclusively (a second fleetpin, or a terminal on the same port, would steal
bytes from the transfer). Stale bytes (a boot banner, an old announcement) are flushed, and the
session starts with HELLO; a device that restarts while a request is outstanding fails that
request with "restarted", which `call` reports rather than guessing whether it ran.
Every failure is a FleetpinError with a next step; LinkFailure/RemoteError stay inspectable
through DeviceRefused.code_name and NoAnswer.reason.

What a board sends is untrusted (it may be damaged, or not a fleetpin agent at all): answers are
type-checked here (check_identity, check_verdict: BadAnswer, a FleetpinError naming the field,
never a traceback), and `printable` turns any text from it into one safe line before it reaches a
terminal (control, escape and bidirectional-override characters shown as \\xNN / \\uNNNN).
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
from collections.abc import Callable
from types import TracebackType
from typing import Any

import serial

from fleetpin.device_errors import hint_for
from fleetpin.errors import FleetpinError
from fleetpin.protocol.client import BadResponse, Call, Client, LinkFailure, RemoteError, Upload
from pinagent.link import FLAG, OP_READ_CACHED
from pinagent.service import OPS

DEFAULT_BAUD = 115200
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
SLOW_FIRST_PROBE_MS = 1000  # first probe of a slow request (commit, TEST_CONNECT, REBOOT)
DRAIN_MS = 50  # after a frame has crossed, the device has read it out of its buffer
MIN_MARGIN_MS = 150  # least margin a timer keeps beyond the line time (OS and USB latency, a busy device)


# ---- what a board sends is untrusted ------------------------------------------------------------

_MAX_TEXT = 200


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def printable(value: Any, limit: int = _MAX_TEXT) -> str:
    """`value` as one line of text that is safe on a terminal: C0 and C1 controls, DEL, escape
    sequences, line and paragraph separators and format characters (bidirectional overrides)
    are shown escaped (\\x1b, \\u202e), and text past `limit` characters is cut with "..."."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    text = text[:limit]
    out = "".join(_escape(c) if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") else c
                  for c in text)
    return out + "..." if cut else out


# What the board printed between frames is kept this far back, for the error when it stops
# answering (a traceback from a crash on the board says why).
_CONSOLE_KEPT = 2048
_ERROR_LINE = re.compile(r"^(?:fleetpin: .*|[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b.*)$", re.MULTILINE)
_TEXT = re.compile(rb"[\t\r\n\x20-\x7e\x80-\xff]*")


def console_says(raw: bytes) -> str | None:
    """The board's last message among the text it printed between frames (a frame starts and
    ends with FLAG and carries binary; what lies between two frames is console text): the last
    line of a traceback ("MemoryError: memory allocation failed, allocating 464 bytes") or of
    main.py's own ("fleetpin: agent not installed or damaged: ..."); None if there is none."""
    for piece in reversed(bytes(raw).split(bytes((FLAG,)))):
        if not _TEXT.fullmatch(piece):
            continue  # a frame's body
        found = [m.group(0) for m in _ERROR_LINE.finditer(piece.decode("utf-8", errors="replace"))]
        if found:
            return printable(found[-1].strip(), 160)
    return None


class BadAnswer(FleetpinError):
    """A board's answer that is not what a fleetpin agent sends (a field missing or of the
    wrong type): nothing in it is used."""

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(f"the device's answer to {what} is malformed: {printable(problem)}",
                         hint="is this a fleetpin agent of this version? run fleetpin device info; the device may "
                              "need re-flashing")


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _kind(v: Any) -> str:
    return "null" if v is None else "true/false" if isinstance(v, bool) else type(v).__name__


def _check(obj: Any, what: str, fields: dict[str, tuple[str, bool]]) -> dict[str, Any]:
    """obj must be a dict whose listed fields (absent = None) have the listed kinds: "text"
    (non-empty str), "int" (not a bool), "bool", "hex64", "texts" (list of str), "any";
    the bool says whether None is allowed. Unknown fields are left alone (a newer agent)."""
    if not isinstance(obj, dict):
        raise BadAnswer(what, f"a {_kind(obj)}, not an object")
    for name, (kind, nullable) in fields.items():
        v = obj.get(name)
        if v is None:
            if nullable:
                continue
            raise BadAnswer(what, f"{name} is missing")
        ok = {
            "text": isinstance(v, str) and v != "",
            "int": isinstance(v, int) and not isinstance(v, bool),
            "bool": isinstance(v, bool),
            "hex64": isinstance(v, str) and _HEX64.fullmatch(v) is not None,
            "texts": isinstance(v, list) and all(isinstance(x, str) for x in v),
            "any": True,
        }[kind]
        if not ok:
            want = {"text": "text", "int": "a whole number", "bool": "true or false", "hex64": "64 hex digits",
                    "texts": "a list of texts", "any": "anything"}[kind]
            shown = printable(repr(v), 40)
            raise BadAnswer(what, f"{name} is {shown} (a {_kind(v)}), not {want}")
    return obj


IDENTITY_FIELDS: dict[str, tuple[str, bool]] = {
    "device_id": ("text", True), "agent": ("text", True), "format": ("int", True), "fleet": ("text", True),
    "mode": ("text", False), "bundle_version": ("int", True), "bundle_sha256": ("hex64", True),
    "clock": ("text", True), "now": ("int", True), "time_floor": ("int", True), "trust": ("bool", True),
    "free": ("int", True), "reports": ("int", True), "problems": ("texts", True), "proto": ("int", True),
    "error": ("text", True),
}
VERDICT_FIELDS: dict[str, tuple[str, bool]] = {
    "allowed": ("bool", False), "reason": ("text", False), "host": ("text", True), "port": ("int", True),
    "rule": ("text", True), "matched_label": ("text", True), "matched_depth": ("int", True),
    "clock_trusted": ("bool", True), "expired": ("bool", True), "detail": ("text", True), "chain": ("any", True),
}


def check_identity(obj: Any) -> dict[str, Any]:
    """An IDENTIFY answer, type-checked (IDENTITY_FIELDS); BadAnswer otherwise."""
    return _check(obj, "IDENTIFY", IDENTITY_FIELDS)


def check_verdict(obj: Any) -> dict[str, Any]:
    """A TEST_CONNECT answer, type-checked (VERDICT_FIELDS, and the chain's depths and pins)."""
    v = _check(obj, "TEST_CONNECT", VERDICT_FIELDS)
    chain = v.get("chain")
    if chain is not None:
        if not isinstance(chain, list):
            raise BadAnswer("TEST_CONNECT", f"chain is a {_kind(chain)}, not a list")
        for c in chain:
            _check(c, "TEST_CONNECT (chain)", {"depth": ("int", False), "pin": ("text", False)})
    return v


class PortError(FleetpinError):
    """The serial port cannot be opened (missing, busy, no permission)."""


class NoAnswer(FleetpinError):
    """No agent answered (timeout), or the device restarted mid-request."""

    def __init__(self, message: str, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.reason = reason


class DeviceRefused(FleetpinError):
    """The agent answered with an error code (PROTOCOL.md's table)."""

    def __init__(self, error: RemoteError, what: str) -> None:
        self.code = error.code
        self.code_name = error.name
        self.remote_message = error.message
        super().__init__(f"the device refused {what}: {error.name}: {printable(error.message)}", hint_for(error.name))


class Transport:
    def __init__(
        self,
        ser: Any,
        port: str,
        timeout: float = 10.0,
        rto_ms: int | None = None,
        baud: int | None = None,
    ) -> None:
        self.ser = ser
        self.port = port
        self.timeout = timeout
        baud = baud or getattr(ser, "baudrate", None) or DEFAULT_BAUD
        self.baud = int(baud)
        # Every timer runs from when the answer should have crossed the line at this rate (the
        # link's line model: fleetpin.protocol.link_host); rto is only the margin on top of that,
        # for what the line does not explain (the device's own time, the OS), and adapts to it.
        # A request is given up once the device has said nothing for `timeout`; slow requests
        # (commit: a signature check in pure Python on the device) are probed less often.
        rto = rto_ms or 300
        self.client = Client(rto_ms=rto, slow_rto_ms=max(rto, int(timeout * 1000)), max_attempts=8,
                             min_rto_ms=MIN_MARGIN_MS, byte_ms=BITS_PER_BYTE * 1000.0 / self.baud)
        self.client.link.max_attempts = max(8, int(timeout * 1000 / rto) + 1)
        # a commit checks a signature in pure Python, a TEST_CONNECT makes a TLS handshake: a
        # probe sooner would only wait in the device's buffer (a damaged answer is still asked
        # for at once)
        self.client.link.slow_probe_ms = SLOW_FIRST_PROBE_MS
        # the device reads its buffer as bytes arrive: a frame lost on the way must not hold the
        # window shut until its timer, so the next frame can go and prove the loss at once
        self.client.link.drain_ms = DRAIN_MS
        # a fresh session starts at a random sequence number, so an answer still on the wire
        # from an earlier session (an interrupted command) is never taken for one of ours
        self.client.link.reseed(int.from_bytes(os.urandom(1), "little"))
        self._t0 = time.monotonic()
        self._fixed_rto = rto_ms is not None
        self.rtt_ms: int | None = None
        self.last_upload: Upload | None = None
        self.ident: dict[str, Any] = {}  # set by callers that start the session with IDENTIFY
        self.heard = bytearray()  # the last bytes the device sent (console_says)

    # ---- opening

    @classmethod
    def open(cls, port: str, baud: int = DEFAULT_BAUD, timeout: float = 10.0) -> Transport:
        try:
            ser = serial.Serial(port, baud, timeout=0.005, exclusive=True)
        except serial.SerialException as e:
            text = str(e)
            if "exclusively lock" in text or "Resource temporarily unavailable" in text or "busy" in text.lower():
                raise PortError(
                    f"{port} is busy: another program has it open",
                    hint="close the other program (a serial terminal, another fleetpin, an IDE's monitor) and retry",
                ) from None
            if "No such file" in text or "could not open port" in text and "Errno 2" in text:
                raise PortError(
                    f"{port}: no such serial port",
                    hint="check the cable; list ports with `python -m serial.tools.list_ports`",
                ) from None
            if "Permission denied" in text:
                raise PortError(f"{port}: permission denied", hint="add yourself to the dialout group (or uucp), then log in again") from None
            raise PortError(f"cannot open {port}: {text}", hint="check the cable and the port name") from None
        try:
            ser.reset_input_buffer()  # a boot banner or an old announcement is not for us
        except (serial.SerialException, OSError):
            pass
        return cls(ser, port, timeout, baud=baud)

    def close(self) -> None:
        try:
            self.ser.close()
        except (serial.SerialException, OSError):
            pass

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ---- running the client

    def now_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def pump(self, done: Callable[[], bool], on_progress: Callable[[], None] | None = None) -> None:
        """Writes, reads and runs timers until done() (the link's own timeouts end every call)."""
        c = self.client
        heard = time.monotonic()
        try:
            while not done():
                out = c.data_to_send(self.now_ms())
                if out:
                    self.ser.write(out)
                # returns as soon as anything arrives (or after the 5 ms read timeout)
                data = self.ser.read(max(1, self.ser.in_waiting))
                if data:
                    heard = time.monotonic()
                    self.heard += data
                    del self.heard[:-_CONSOLE_KEPT]
                    c.receive_data(data, self.now_ms())
                elif time.monotonic() - heard > self.timeout:
                    # the link's own attempts may last longer: the user's timeout bounds silence
                    raise self._no_answer("timeout", "the request")
                c.tick(self.now_ms())
                if on_progress is not None:
                    on_progress()
        except (serial.SerialException, OSError) as e:
            raise NoAnswer(f"the serial port {self.port} failed: {e}", "port", hint="check the cable, then run the command again") from None

    def identify(self) -> dict[str, Any]:
        """The device's IDENTIFY answer, type-checked (check_identity)."""
        return check_identity(self.call(self.client.identify(), "IDENTIFY"))

    def connect_identify(self) -> dict[str, Any]:
        """connect() with IDENTIFY as the session's first request (one round trip less than a
        PING first); its answer, type-checked (check_identity)."""
        return check_identity(self.connect(self.client.identify, "IDENTIFY"))

    def call(self, call: Call, what: str) -> Any:
        """Runs one request to its end; returns its result or raises a FleetpinError."""
        self.pump(lambda: call.done)
        return self.result(call, what)

    def result(self, call: Call, what: str) -> Any:
        err = call.error
        if err is None:
            return call.result
        if isinstance(err, RemoteError):
            raise DeviceRefused(err, what)
        if isinstance(err, LinkFailure):
            raise self._no_answer(err.reason, what)
        if isinstance(err, BadResponse):
            raise FleetpinError(f"the device's answer to {what} did not parse: {printable(err)}", hint="is this a fleetpin agent of the same protocol version?")
        raise FleetpinError(f"{what} failed: {printable(err)}")

    def _no_answer(self, reason: str, what: str) -> NoAnswer:
        said = console_says(self.heard)
        if said is not None:  # the board crashed, and printed why
            return NoAnswer(f"the agent on the device failed during {what}; its console said: {said}", reason,
                            hint="a MemoryError: the application leaves the agent too little heap; otherwise "
                                 "re-flash the agent (`fleetpin provision`) and report the error")
        if reason == "restarted":
            return NoAnswer(f"the device restarted during {what}", reason, hint="run the command again once it is up")
        if reason == "version":
            return NoAnswer(f"the device speaks another protocol version ({what} not sent)", reason, hint="update fleetpin or the agent so both speak the same protocol")
        return NoAnswer(
            f"no agent answering on {self.port} ({what}: no answer within {self.timeout:g} s)",
            reason,
            hint="check the cable and that the board runs the agent (not the REPL or a crash loop); then retry",
        )

    def connect(self, first: Callable[[], Call] | None = None, what: str = "the session start") -> Any:
        """Starts the session (HELLO, queued first by the link) and proves an agent answers: with
        `first` (e.g. client.identify), that request's result, else a PING's. The timers need no
        measurement first: they follow from the line's rate (the link's line model) and adapt
        their margin to every answer. A restart announcement right after opening is retried
        once."""
        result: Any = None
        for attempt in range(2):
            started = time.monotonic()
            call = first() if first is not None else self.client.ping(b"fleetpin")
            self.pump(lambda: call.done)
            if isinstance(call.error, LinkFailure) and call.error.reason == "restarted" and attempt == 0:
                continue
            result = self.result(call, what)
            break
        self.rtt_ms = int((time.monotonic() - started) * 1000 / 2)
        return result

    # ---- multi-request operations

    def read_all(self, which: str) -> bytes:
        """The whole stored bundle ("bundle") or report log ("reports"), read in pieces the
        line's error rate pays for (fleetpin.protocol.client.Read), pipelined."""
        plan = self.client.read_all(which)
        self.pump(lambda: plan.done)
        if plan.error is not None:
            what = f"reading the {which}"
            if isinstance(plan.error, BadResponse):
                raise FleetpinError(f"{what}: {plan.error}", hint="it changed while being read: retry")
            fake = Call(0, 0, None)
            fake.error, fake.done = plan.error, True
            self.result(fake, what)
        return plan.data or b""

    def start_upload(self, bundle: bytes) -> Upload:
        """Queues the upload (WRITE_BEGIN first) and hands out what the line takes now, so the
        transfer runs while the caller works; upload(..., up) then sees it through."""
        up: Upload = self.client.upload(bundle)
        self.last_upload = up
        out = self.client.data_to_send(self.now_ms())
        if out:
            try:
                self.ser.write(out)
            except (serial.SerialException, OSError) as e:
                raise NoAnswer(f"the serial port {self.port} failed: {e}", "port", hint="check the cable, then run the command again") from None
        return up

    def upload(self, bundle: bytes, progress: Callable[[int, int], None] | None = None, up: Upload | None = None) -> dict[str, Any]:
        """Sends and commits a bundle (or sees through one start_upload began). On a noisy line
        the link shrinks the chunks to what the error rate pays for and re-sends only the lost
        ones (fleetpin.protocol.client.Upload), in the same session: the device keeps every chunk
        it received, and a new session resumes from what it acknowledged (WRITE_BEGIN's
        answer)."""
        total = len(bundle)
        if up is None:
            up = self.client.upload(bundle)
        self.last_upload = up

        def report() -> None:
            if progress is not None:
                progress(up.acked, total)

        self.pump(lambda: up.done, report)
        report()
        if up.error is not None:
            if isinstance(up.error, RemoteError):
                raise DeviceRefused(up.error, "the bundle")
            if isinstance(up.error, LinkFailure):
                raise self._no_answer(up.error.reason, "the transfer")
            raise FleetpinError(f"the transfer failed: {printable(up.error)}")
        return dict(up.result or {})

    @staticmethod
    def _link_stats(c: Client) -> dict[str, Any]:
        link = c.link
        names = {op: name for op, (name, _run) in OPS.items()}
        names[OP_READ_CACHED] = "READ_CACHED"
        resent = {names.get(op, "HELLO" if op == 0 else str(op)): n for op, n in sorted(link.resent_ops.items())}
        return {"wire_bytes_sent": link.wire_bytes_sent, "retransmissions": link.retransmissions + link.probes,
                "bad_frames": link.bad_frames, "resent": resent}

    @property
    def stats(self) -> dict[str, Any]:
        return self._link_stats(self.client)

