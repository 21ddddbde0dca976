# main.py: the fleetpin agent's entry point on the board (main.py, not boot.py: a soft reset
# from the raw REPL runs boot.py only, so tools can still reach the REPL without the agent).
#
# The firmware compiles this file from source at every boot, a wake from deep sleep too, so it
# holds only what must work when the agent's code cannot be imported: Ctrl-C off (first thing:
# a transfer's bytes must never abort main.py), whether the board is locked, and the locked
# board's loop. The board's life (boot the agent, the listening window, the app, serving for
# good) is pinagent.io.board, loaded from .mpy.
#
# A locked board (any board whose config, /fleetpin/config.json, does not say "repl": true, or
# that has no readable config) never leaves main.py and never has Ctrl-C on after the first
# lines below: not after the window, not while the app runs or after it fails or exits, not in
# the serve loop, not when the agent's own code cannot be imported. The REPL comes only after
# main.py ends, so no byte on the console reaches it. (What comes before main.py, the firmware
# and boot.py, is the firmware's to close: see the README's threat model.)
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


def _repl_wanted():
    # Read with open() and json, not the agent's code, so the answer holds when that code cannot
    # be imported; anything missing or unreadable means a locked board.
    try:
        import json

        with open("/fleetpin/config.json", "rb") as f:
            cfg = json.loads(f.read(4096))
        return isinstance(cfg, dict) and cfg.get("repl") is True
    except Exception:
        return False


def main():
    repl = _repl_wanted()
    try:
        from pinagent.io import board
    except Exception as e:
        error = repr(e)
    else:
        return board.run(repl, _ctrl_c_off)
    while not repl:
        # Nothing to serve, and a locked board gets no REPL either: it says why every 10 s until
        # it is re-flashed (the production line's ROM bootloader).
        try:
            print("fleetpin: agent not installed or damaged:", error)
            import time

            time.sleep(10)
        except _ANY:
            pass
    print("fleetpin: agent not installed or damaged:", error)
    micropython.kbd_intr(3)


if __name__ == "__main__":
    main()
