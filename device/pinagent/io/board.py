"""The board's life, as device/main.py runs it once Ctrl-C is off: main.py is compiled from
source at every boot (a wake from deep sleep too), so it keeps only what must work when this
package cannot be imported, and this module (.mpy, loaded without compiling) does the rest.

    run(repl, ctrl_c_off)   repl: the provisioning config says "repl": true (a development
                            board); ctrl_c_off: main.py's own switch (it must exist before
                            anything is imported). Returns the agent on a development board (the
                            REPL follows); never returns on a locked one.

1. Build and boot the agent (console.board_agent). Nothing in storage can stop this: the store
   boots into the safe state, and if even the agent cannot be built a stand-in answers IDENTIFY
   with the error, so the serial service always runs.
2. Listening window: serve the update protocol on the console for console.WINDOW_MS after reset,
   waiting for a HELLO; a session that started is served until it goes idle. This is how a
   locked production board without a REPL is updated: reset it, and the host says HELLO. A wake
   from deep sleep (machine.reset_cause()) skips it: a board that sleeps between measurements
   pays the boot at every wake, and the window would be most of it. A reset (the button, the
   host's DTR/RTS, power) opens it.
3. The application hook: if /app.py (or app.mpy) exists, app.main(agent) runs. Application code
   opens its TLS connections with agent.connect(host, port, timeout): pinned, verified.
4. When there is no app, or it returns or fails: serve the protocol for good, unless repl, in
   which case run() returns and the REPL is reachable again.

A locked board never has Ctrl-C on here: not after the window, not while the app runs or after
it fails or exits, not in the serve loop (see main.py).
"""

from pinagent.io import console

# Every exception a locked board stops on (all but GeneratorExit, which nothing raises).
_ANY = (Exception, KeyboardInterrupt, SystemExit)


def _say(*parts):
    # Only outside serving: the console carries the protocol's frames while serving.
    try:
        print("fleetpin:", *parts)
    except Exception:
        pass


def _print_exception(e):
    import sys

    try:
        sys.print_exception(e)  # MicroPython
    except AttributeError:  # CPython (tests)
        print(repr(e))
    except Exception:
        pass


def _kbd_intr_on():
    import micropython  # looked up at each call: the tests put a fake in sys.modules

    micropython.kbd_intr(3)


def _woke_from_deep_sleep():
    try:
        import machine

        return machine.reset_cause() == machine.DEEPSLEEP_RESET
    except Exception:  # no such call (CPython, the unix port): a reset
        return False


def load_app():
    """The `app` module, or None if there is none (an ImportError inside app.py propagates)."""
    try:
        import app  # type: ignore[import-not-found]
    except ImportError as e:
        if "'app'" in str(e) or str(e) == "app":
            return None
        raise
    return app


def start(fs=None):
    """The booted agent (over fs, a pinagent.store.FS: the board's flash by default), or a
    stand-in that reports why it could not be built."""
    try:
        return console.board_agent(fs)
    except Exception as e:
        return console.BrokenAgent(e)


def run(repl, ctrl_c_off):
    agent = start()
    try:
        if not _woke_from_deep_sleep():
            console.serve(agent, window_ms=console.WINDOW_MS, ctrl_c_after=repl)
        elif repl:
            _kbd_intr_on()  # as the window leaves it, for the app
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
        _kbd_intr_on()
        return agent
    while True:
        ctrl_c_off()  # the app may have switched it on
        try:
            console.serve(agent, ctrl_c_after=False)
        except _ANY as e:  # keep serving, whatever happens
            try:
                _print_exception(e)
                console.sleep_ms(1000)
            except _ANY:
                pass
