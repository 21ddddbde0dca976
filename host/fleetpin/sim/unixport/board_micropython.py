# `micropython` on the virtual board: kbd_intr() as on the ESP32. There the console's driver
# turns the interrupt character into KeyboardInterrupt, and with kbd_intr(-1) passes it on as
# data. The unix port turns SIGINT into KeyboardInterrupt (and kbd_intr(-1) restores SIGINT's
# default: the process would die), so the console here is a pseudo-terminal whose line
# discipline sends SIGINT for the character only while it is enabled (ISIG on, VINTR = c).
import termios

import micropython as _micropython

_isig = 1  # termios ISIG bit and VINTR index of the host's platform (init() sets them)
_vintr = 0


def init(isig, vintr):
    global _isig, _vintr
    _isig = isig
    _vintr = vintr


def _console(c):
    try:
        attrs = termios.tcgetattr(0)
        if c < 0:
            attrs[3] &= ~_isig
        else:
            attrs[3] |= _isig
            attrs[6][_vintr] = bytes((c,))
        termios.tcsetattr(0, termios.TCSANOW, attrs)
    except Exception:  # not a terminal (a test running the board on pipes): data only
        pass


def kbd_intr(c):
    if c < 0:
        _console(c)  # the character is data from now on ...
        _micropython.kbd_intr(c)  # ... before SIGINT goes back to its default
    else:
        _micropython.kbd_intr(c)
        _console(c)


def __getattr__(name):
    return getattr(_micropython, name)
