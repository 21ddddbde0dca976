# main.py: the fleetpin agent's entry point on the board (main.py, not boot.py: a soft reset
# from the raw REPL runs boot.py only, so tools can still reach the REPL without the agent).
#
# 1. Ctrl-C off (first thing: a transfer's bytes must never abort main.py).
# 2. Build and boot the agent (pinagent.io.console.board_agent). Nothing in storage can stop
#    this: the store boots into the safe state, and if even the agent cannot be built a
#    stand-in answers IDENTIFY with the error, so the serial service always runs.
# 3. Listening window: serve the update protocol on the console for WINDOW_MS after reset,
#    waiting for a HELLO; a session that started is served until it goes idle. This is how a
#    locked production board without a REPL is updated: reset it, and the host says HELLO.
#    A wake from deep sleep (machine.reset_cause()) skips it: a board that sleeps between
#    measurements pays the boot at every wake, and the window would be most of it. A reset (the
#    button, the host's DTR/RTS, power) opens it as before.
# 4. The application hook: if /app.py (or app.mpy) exists, app.main(agent) runs. Application
#    code opens its TLS connections with agent.connect(host, port, timeout): pinned, verified.
# 5. When there is no app, or it returns or fails: serve the protocol for good, unless the
#    provisioning config (/fleetpin/config.json) says "repl": true (development boards), in
#    which case main.py ends and the REPL is reachable again.
#
# A locked board (any board whose config does not say "repl": true, or that has no readable
# config) never leaves main.py and never has Ctrl-C on after the first lines below: not after
# the window, not while the app runs or after it fails or exits, not in the serve loop, not
# when the agent's own code cannot be imported. The REPL comes only after main.py ends, so no
# byte on the console reaches it. (What comes before main.py, the firmware and boot.py, is the
# firmware's to close: see the README's threat model.)
import micropython

# Every exception main.py stops on a locked board (all but GeneratorExit, which nothing raises).
_ANY = (Exception, KeyboardInterrupt, SystemExit)


def _ctrl_c_off():
    # The firmware starts main.py with Ctrl-C on. A 0x03 that arrives before kbd_intr(-1) takes
    # effect is not raised at once: the VM raises it at its next check point (a jump), which
    # may be after kbd_intr(-1) returned. The loop's jump inside the try is such a point, so it
    # is raised and caught here, and Ctrl-C is switched off again, until a pass sees none.
    while True:
        try:
            micropython.kbd_intr(-1)
            for _ in (0,):
                pass
            return
        except _ANY:
            pass


_ctrl_c_off()

import sys  # noqa: E402

WINDOW_MS = 3000
CONFIG = "/fleetpin/config.json"


def _say(*parts):
    # Only outside serving: the console carries the protocol's frames while serving.
    try:
        print("fleetpin:", *parts)
    except Exception:
        pass


def _print_exception(e):
    try:
        sys.print_exception(e)  # MicroPython
    except AttributeError:  # CPython (tests)
        print(repr(e))
    except Exception:
        pass


def _repl_wanted():
    """Whether the provisioning config says "repl": true (a development board). Read with open()
    and json, not the agent's code, so the answer holds when that code cannot be imported;
    anything missing or unreadable means a locked board."""
    try:
        import json

        with open(CONFIG, "rb") as f:
            cfg = json.loads(f.read(4096))
        return isinstance(cfg, dict) and cfg.get("repl") is True
    except Exception:
        return False


def _woke_from_deep_sleep():
    try:
        import machine

        return machine.reset_cause() == machine.DEEPSLEEP_RESET
    except Exception:  # no such call (CPython, the unix port): a reset
        return False


def start():
    """(console module, agent); (None, error text) if the agent's code itself cannot be imported."""
    try:
        from pinagent.io import console
    except Exception as e:
        return None, repr(e)
    try:
        agent = console.board_agent()
    except Exception as e:
        agent = console.BrokenAgent(e)
    return console, agent


def load_app():
    """The `app` module, or None if there is none (an ImportError inside app.py propagates)."""
    try:
        import app  # type: ignore[import-not-found]
    except ImportError as e:
        if "'app'" in str(e) or str(e) == "app":
            return None
        raise
    return app


def _locked_without_agent(error):
    # Nothing to serve, and a locked board gets no REPL either: it says why every 10 s until it
    # is re-flashed (the production line's ROM bootloader).
    import time

    while True:
        try:
            _say("agent not installed or damaged:", error)
            time.sleep(10)
        except _ANY:
            pass


def main():
    repl = _repl_wanted()
    console, agent = start()
    if console is None:
        if not repl:
            _locked_without_agent(agent)
        _say("agent not installed or damaged:", agent)
        micropython.kbd_intr(3)
        return None
    try:
        if not _woke_from_deep_sleep():
            console.serve(agent, window_ms=WINDOW_MS, ctrl_c_after=repl)
        elif repl:
            micropython.kbd_intr(3)  # as the window leaves it, for the app
    except _ANY as e:
        _say("listening window failed:")
        _print_exception(e)
    try:
        app = load_app()
        if app is not None:
            app.main(agent)  # Ctrl-C is on here only on development boards
    except KeyboardInterrupt:
        _say("app interrupted")
    except _ANY as e:
        _say("app failed:")
        _print_exception(e)
    if repl:
        micropython.kbd_intr(3)
        return agent
    while True:
        _ctrl_c_off()  # the app may have switched it on
        try:
            console.serve(agent, ctrl_c_after=False)
        except _ANY as e:  # keep serving, whatever happens
            try:
                _print_exception(e)
                console.sleep_ms(1000)
            except _ANY:
                pass


if __name__ == "__main__":
    main()
