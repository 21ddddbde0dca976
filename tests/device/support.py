# Helpers for the device-core tests. These tests run unchanged under CPython (pytest) and on
# the MicroPython VM, so they use plain asserts and these few helpers instead of pytest.


class Skipped(Exception):
    """Raised by skip() off pytest: the MicroPython runners count the test as skipped."""


def skip(reason):
    """This test cannot run on this runtime: reported as skipped there, never as passed."""
    try:
        import pytest
    except ImportError:
        raise Skipped(reason)
    pytest.skip(reason)


def raises(exc_type, fn, *args, **kwargs):
    """Calls fn and returns the exception it raised; fails unless it is an exc_type."""
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e
    except Exception as e:  # the wrong error is a failure too, with its name in the message
        raise AssertionError("expected %s, got %s: %s" % (exc_type.__name__, type(e).__name__, e))
    raise AssertionError("expected %s, nothing was raised" % exc_type.__name__)


def _vectors_dir():
    here = __file__.replace("\\", "/")
    return here[: here.rfind("/")] + "/../vectors/"


def read_vector(name):
    """The bytes of tests/vectors/<name> (the same layout is mounted in the VM)."""
    with open(_vectors_dir() + name, "rb") as f:
        return f.read()


def vector_json(name):
    import json

    return json.loads(read_vector(name))


class Lcg:
    """A seeded generator that gives the same numbers on every runtime (`random` differs between
    CPython and MicroPython): for lossy lines, fault injection and fuzzing in the tests."""

    def __init__(self, seed):
        self.s = seed

    def next(self, n):
        self.s = (self.s * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.s >> 8) % n
