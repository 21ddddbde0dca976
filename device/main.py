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
# 4. The application hook: if /app.py (or app.mpy) exists, app.main(agent) runs. Application
#    code opens its TLS connections with agent.connect(host, port, timeout): pinned, verified.
#    Ctrl-C stays off on production boards while it runs; only "repl": true turns it on.
# 5. When there is no app, or it returns or fails: serve the protocol for good, unless the
#    provisioning config (/fleetpin/config.json) says "repl": true (development boards), in
#    which case main.py ends and the REPL is reachable again.
import micropython

micropython.kbd_intr(-1)

import sys  # noqa: E402

WINDOW_MS = 3000


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


def start():
    """(console module, agent); (None, None) if the agent's code itself cannot be imported."""
    try:
        from pinagent.io import console
    except Exception as e:
        micropython.kbd_intr(3)
        _say("agent not installed or damaged:", repr(e))
        return None, None
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


def _repl_wanted(agent):
    try:
        from pinagent.io import flash

        return flash.read_config(agent.fs).get("repl") is True
    except Exception:
        return False


def main():
    console, agent = start()
    if console is None:
        return None
    repl = _repl_wanted(agent)
    try:
        console.serve(agent, window_ms=WINDOW_MS)
    except Exception as e:
        _say("listening window failed:")
        _print_exception(e)
    if not repl:
        # serve() turns Ctrl-C back on when it returns; a locked board keeps it off, so no byte
        # on the console can end main.py and drop to the REPL (which could rewrite /fleetpin)
        micropython.kbd_intr(-1)
    try:
        app = load_app()
        if app is not None:
            app.main(agent)
    except KeyboardInterrupt:  # only possible on a development board (repl: true)
        _say("app interrupted")
    except Exception as e:
        _say("app failed:")
        _print_exception(e)
    if repl:
        micropython.kbd_intr(3)
        return agent
    while True:
        try:
            console.serve(agent)
        except KeyboardInterrupt:  # never leave main.py on a locked board
            pass
        except Exception as e:  # keep serving, whatever happens
            _print_exception(e)
            console.sleep_ms(1000)
        micropython.kbd_intr(-1)


if __name__ == "__main__":
    main()
