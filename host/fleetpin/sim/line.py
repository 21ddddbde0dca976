"""A virtual board's serial line: a pseudo-terminal whose far end is the board, with the line
rate enforced and faults injected, as a UART and a noisy cable would.

    line = Line(on_receive, baud=115200, faults=Faults.parse("drop=0.01,seed=7"))
    line.start(); line.port -> "/dev/pts/N" (what pyserial opens); line.send(b"...")

One thread pumps both directions. Host -> board: bytes are read from the pty master as soon as
the host writes them, then handed to `on_receive` no earlier than they would have arrived over
the wire (10 bits per byte at `baud`, one after another). Board -> host: `send` queues bytes
that are written to the pty at the same rate. Faults are drawn per byte and per direction from
one seeded generator, so a run is repeatable for a given seed and timing:
    drop=P   the byte is lost            flip=P  one bit of the byte is inverted
    dup=P    the byte arrives twice      disconnect=P  the line goes dead for `outage` seconds
    outage=S (default 0.5)               seed=N (default 0)
A dead line (a disconnect, or `unplug()`) loses every byte in both directions, as a pulled
UART cable does; the port itself stays (a USB board's port would vanish: not modelled).
The pty is raw (no echo, no newline translation) from the start, and the board keeps its own
slave descriptor open so the port survives the host closing and reopening it.
"""

from __future__ import annotations

import collections
import errno
import os
import random
import select
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetpin.errors import UsageError

BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit


@dataclass
class Faults:
    drop: float = 0.0
    flip: float = 0.0
    dup: float = 0.0
    disconnect: float = 0.0
    outage: float = 0.5
    seed: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"drop": 0, "flip": 0, "dup": 0, "disconnect": 0})

    @property
    def any(self) -> bool:
        return bool(self.drop or self.flip or self.dup or self.disconnect)

    @staticmethod
    def parse(spec: str | None) -> Faults:
        """"drop=0.01,flip=0.01,dup=0.005,disconnect=0.001,seed=7" -> Faults (UsageError if bad)."""
        f = Faults()
        if not spec:
            return f
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            name, _, value = part.partition("=")
            name = name.strip()
            try:
                if name == "seed":
                    f.seed = int(value)
                elif name in ("drop", "flip", "dup", "disconnect", "outage"):
                    v = float(value)
                    if name != "outage" and not 0 <= v <= 1:
                        raise ValueError
                    if name == "outage" and v < 0:
                        raise ValueError
                    setattr(f, name, v)
                else:
                    raise UsageError(
                        f"unknown fault {name!r}", hint="faults: drop, flip, dup, disconnect (rates 0..1), outage (s), seed"
                    )
            except ValueError:
                raise UsageError(f"bad fault value {part!r}", hint="e.g. drop=0.01,flip=0.01,seed=7 (rates 0..1)") from None
        return f


class Line:
    def __init__(self, on_receive: Callable[[bytes], None], baud: int | None = None, faults: Faults | None = None) -> None:
        self.on_receive = on_receive
        self.baud = baud
        self.faults = faults or Faults()
        self._rng = random.Random(self.faults.seed)
        self.byte_time = BITS_PER_BYTE / baud if baud else 0.0
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # binary-safe before the host ever configures it
        os.set_blocking(self.master, False)
        self.port = os.ttyname(self._slave)
        self._lock = threading.Lock()
        self._tx: collections.deque[bytes] = collections.deque()  # board -> host, not yet on the wire
        self._rx: collections.deque[tuple[float, bytes]] = collections.deque()  # (arrival time, byte)
        self._rx_clock = 0.0  # when the last received byte finishes arriving
        self._tx_clock = 0.0
        self._tx_pending = b""  # bytes due on the wire, written as their time comes
        self._dead_until = 0.0
        self._unplugged = False
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self.bytes_in = 0  # bytes delivered to the board
        self.bytes_out = 0  # bytes written towards the host

    # ---- control

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"line {self.port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
        for fd in (self.master, self._slave, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def send(self, data: bytes) -> None:
        """Queues bytes from the board to the host (thread-safe)."""
        if data:
            with self._lock:
                self._tx.append(bytes(data))
            self._wake()

    def unplug(self) -> None:
        self._unplugged = True

    def plug(self) -> None:
        self._unplugged = False

    def discard_input(self) -> None:
        """Forgets bytes still on their way to the board (its receive buffer is lost at reset)."""
        with self._lock:
            self._rx.clear()

    @property
    def dead(self) -> bool:
        return self._unplugged or time.monotonic() < self._dead_until

    # ---- the pump

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _faulty(self, data: bytes, now: float) -> bytes:
        f = self.faults
        if not f.any and not self.dead:
            return data
        out = bytearray()
        for b in data:
            if f.disconnect and self._rng.random() < f.disconnect:
                f.counts["disconnect"] += 1
                self._dead_until = max(self._dead_until, now + f.outage)
            if self.dead:
                continue
            r = self._rng.random()
            if r < f.drop:
                f.counts["drop"] += 1
                continue
            r -= f.drop
            if r < f.flip:
                f.counts["flip"] += 1
                b ^= 1 << self._rng.randrange(8)
            elif r - f.flip < f.dup:
                f.counts["dup"] += 1
                out.append(b)
            out.append(b)
        return bytes(out)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = self._next_due(now)
            try:
                ready, _, _ = select.select([self.master, self._wake_r], [], [], timeout)
            except (OSError, ValueError):
                return
            now = time.monotonic()
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
            if self.master in ready:
                self._read_host(now)
            self._deliver(time.monotonic())
            self._transmit(time.monotonic())

    def _next_due(self, now: float) -> float:
        t = 0.05
        with self._lock:
            if self._rx:
                t = min(t, max(0.0, self._rx[0][0] - now))
            if self._tx or self._tx_pending:
                t = min(t, max(0.0, self._tx_clock + self.byte_time - now) if self._tx_pending else 0.0)
        return max(t, 0.0005 if t else 0.0)

    def _read_host(self, now: float) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EIO):
                return
            raise
        data = self._faulty(data, now)
        if not data:
            return
        with self._lock:
            start = max(now, self._rx_clock)
            if self.byte_time:
                for i, b in enumerate(data):
                    self._rx.append((start + (i + 1) * self.byte_time, bytes((b,))))
                self._rx_clock = start + len(data) * self.byte_time
            else:
                self._rx.append((now, data))

    def _deliver(self, now: float) -> None:
        with self._lock:
            chunk = bytearray()
            while self._rx and self._rx[0][0] <= now:
                chunk += self._rx.popleft()[1]
        if chunk:
            self.bytes_in += len(chunk)
            self.on_receive(bytes(chunk))

    def _transmit(self, now: float) -> None:
        with self._lock:
            while self._tx:
                data = self._faulty(self._tx.popleft(), now)
                if not self._tx_pending:
                    self._tx_clock = max(self._tx_clock, now)
                self._tx_pending += data
        if not self._tx_pending:
            return
        if self.byte_time:
            # bytes whose last bit has left the UART by now
            n = int((now - self._tx_clock) / self.byte_time)
            if n <= 0:
                return
            n = min(n, len(self._tx_pending))
        else:
            n = len(self._tx_pending)
        try:
            written = os.write(self.master, self._tx_pending[:n])
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise
            written = n  # nobody reading and the pty buffer full: the bytes are lost, as on a UART
        self._tx_pending = self._tx_pending[written:]
        self._tx_clock += written * self.byte_time
        self.bytes_out += written
