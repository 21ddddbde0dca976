"""Serving the update protocol on the board's console (UART0 or USB), and the board's wiring.

    serve(agent=None, window_ms=None, ctrl_c_after=True)
                                         serves device/PROTOCOL.md on sys.stdin.buffer /
                                         sys.stdout.buffer until no session (HELLO) started
                                         within window_ms, or a session went idle for idle_ms;
                                         window_ms None = serve forever. REBOOT resets the
                                         board after its answer is written. A session that
                                         went idle, and serving that stops, end the session
                                         (Service.end_session: an upload never committed
                                         gives its buffer back to the heap).
    board_agent()                        the Agent over the board's flash, clock and TLS, booted;
                                         its device id is the config's "device_id" if the
                                         board's config names it, else the base MAC

From the REPL (e.g. on a development board, after main.py handed over):
    import pinagent.io.console as c; c.serve()

Heap: the serial service and the update path (SESSION_MODULES: link, service, and
pinagent.UPDATE_PATH: handler, bundle decoder, signers, ecdsa) are imported only when a frame starts
on the console (a flag byte: a host's HELLO), and forgotten again when the session ends or serving
stops, so the application never holds their code. Until
then serve() only watches for that byte (the start-up announcement is a constant, ANNOUNCE).

Ctrl-C is disabled (micropython.kbd_intr(-1)) while serving, so no byte of a transfer can
interrupt it. When serve() returns or raises it is enabled again only if ctrl_c_after is true
(the default, for serve() typed at the REPL); main.py passes False on locked (production)
boards, which never have Ctrl-C on once main.py has started: a 0x03 in the moment between
serve()'s end and the caller switching it off again would drop the board to the REPL.
Nothing may print while serving: the console carries the frames.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


import time

from pinagent import UPDATE_PATH, forget

WINDOW_MS = const(3000)  # after reset: how long main.py waits for a HELLO
IDLE_MS = const(30000)  # a session with no frame for this long is over
POLL_MS = const(20)
RESET_DELAY_MS = const(100)  # lets the REBOOT answer leave the UART before the reset
EPOCH_2000 = const(946684800)  # POSIX seconds of 2000-01-01, the ESP32 port's epoch
MIN_PLAUSIBLE = const(1704067200)  # 2024-01-01: an earlier reading means the clock was never set
FLAG = const(0x7E)  # every frame starts with it (pinagent.link)

# What a session loads, forgotten when it ends (module docstring)
SESSION_MODULES = ("pinagent.service", "pinagent.link") + UPDATE_PATH

# pinagent.link.DeviceLink(...).announce() with the link's defaults (window 256, max_frame 256,
# cache 8): the unsolicited HELLO answer written when serving starts (tests check they agree)
ANNOUNCE = b"~\x00\x80\x00}!\x00}!\x00}!\x08}!\x94\x9a\xd4\xa0~"


# The board's tick functions; CPython (the simulation, the tests) has none of them.
def ticks_ms():
    try:
        return time.ticks_ms()
    except AttributeError:
        return int(time.time() * 1000)


def ticks_diff(a, b):
    try:
        return time.ticks_diff(a, b)
    except AttributeError:
        return a - b


def sleep_ms(ms):
    try:
        time.sleep_ms(ms)
    except AttributeError:
        time.sleep(ms / 1000)


def _kbd_intr(c):
    try:
        import micropython

        micropython.kbd_intr(c)
    except Exception:  # CPython without the module (the simulation)
        pass


class StdioPort:
    """The console as a byte port: read(timeout_ms) -> bytes (b"" if none), write(bytes)."""

    def __init__(self):
        import select
        import sys

        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        self._buf = bytearray(64)

    def read(self, timeout_ms):
        if not self._poll.poll(timeout_ms):
            return b""
        # One byte at a time while more is waiting: a larger read would block for bytes that
        # have not arrived yet.
        buf = self._buf
        n = 0
        while n < len(buf):
            b = self._in.read(1)
            if not b:
                break
            buf[n] = b[0]
            n += 1
            if not self._poll.poll(0):
                break
        return bytes(buf[:n])

    def write(self, data):
        self._out.write(data)


class BrokenAgent:
    """Stands in when the agent cannot even be built (e.g. out of memory): IDENTIFY says why,
    REBOOT works, every other request is refused as unsupported (service.Handler's requests)."""

    def __init__(self, error):
        self.error = "%s: %s" % (type(error).__name__, error)
        self.reboot_requested = False

    def identify(self):
        return {"mode": "broken", "error": self.error[:120]}

    def reboot(self):
        self.reboot_requested = True

    def end_session(self):
        pass

    def __getattr__(self, name):  # read_bundle, write_begin, ...: refused
        def unsupported(*args):
            from pinagent import service

            raise service.ServiceError(service.E_UNSUPPORTED, name)

        return unsupported


def _open(agent, session):
    """The update path, imported now: (service, device link); `session` carries a session over
    from a link that was dropped while it was open (serving for good: the host did not say bye)."""
    from pinagent.link import DeviceLink
    from pinagent.service import Service

    svc = Service(agent)
    link = DeviceLink(svc.dispatch)
    link.session = session
    return svc, link


def serve(agent=None, window_ms=None, idle_ms=IDLE_MS, port=None, reset=None, ctrl_c_after=True):
    """Serves the protocol (module docstring); returns the agent."""
    _kbd_intr(-1)
    svc = link = None
    try:
        if agent is None:
            try:
                agent = board_agent()
            except Exception as e:
                agent = BrokenAgent(e)
        if port is None:
            port = StdioPort()
        port.write(ANNOUNCE)
        start = last = ticks_ms()
        live = False  # a session was open when serving for good dropped its link
        while True:
            data = port.read(POLL_MS)
            now = ticks_ms()
            if data and link is None and FLAG in data:  # a frame starts: a host is there
                svc, link = _open(agent, live)
                last = now
            if data and link is not None:
                frames = link.frames
                out = link.receive_data(data)
                if out:
                    port.write(out)
                if link.frames != frames:
                    last = now
                if svc.reboot_requested:
                    sleep_ms(RESET_DELAY_MS)
                    (reset or _reset)()
                    return agent
            if link is not None and idle_ms is not None and ticks_diff(now, last) >= idle_ms:
                if window_ms is not None:
                    if link.session:
                        return agent  # (the session ends below)
                else:  # serving for good: the session is over, its code goes; the board keeps listening
                    live = link.session
                    svc.end_session()
                    svc = link = None
                    forget(SESSION_MODULES)
            if window_ms is not None and (link is None or not link.session) and ticks_diff(now, start) >= window_ms:
                return agent
    finally:
        if svc is not None:
            svc.end_session()
        svc = link = None
        forget(SESSION_MODULES)
        if ctrl_c_after:
            _kbd_intr(3)


def _reset():
    import machine

    machine.reset()


# ---- the board's wiring


def posix_clock():
    """POSIX seconds from the RTC, or None if it was never set. The ESP32 port counts from
    2000-01-01 (time.gmtime(0) is in 2000 there), so its readings are shifted by EPOCH_2000."""
    t = int(time.time())
    if time.gmtime(0)[0] == 2000:
        t += EPOCH_2000
    return t if t >= MIN_PLAUSIBLE else None


def device_id():
    """The base MAC as 12 hex digits (machine.unique_id() on the ESP32)."""
    try:
        import machine

        return machine.unique_id().hex()
    except Exception:
        return "unknown"


def base_mac():
    """The base MAC as esptool prints it (aa:bb:cc:dd:ee:ff): machine.unique_id() on the ESP32."""
    try:
        import machine

        return ":".join("%02x" % b for b in machine.unique_id())
    except Exception:
        return None


def board_agent(fs=None, tls_adapter=None):
    """The agent over the board's flash (pinagent.io.flash), RTC and native TLS, booted."""
    from pinagent.agent import Agent
    from pinagent.io import flash
    from pinagent.io.tls import EspTls

    if fs is None:
        fs = flash.filesystem()
    cfg = flash.read_config(fs)
    fleet = cfg.get("fleet")
    if not isinstance(fleet, str) or not fleet:
        fleet = None  # adopt the installed bundle's
    name = cfg.get("device_id")  # a name the provisioning config gives this one board, if any
    if not isinstance(name, str) or not name:
        name = device_id()
    agent = Agent(fs, posix_clock, name, fleet, tls_adapter or EspTls(), mac=base_mac())
    agent.boot()
    return agent
