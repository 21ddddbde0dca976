# The life of a board, on real MicroPython (the unix port), for bench/bench_agent.py, which
# starts it under a hard heap (-X heapsize) with this folder, the agent and the board's main.py on
# MICROPYPATH, and talks to it as a host would: stdin and stdout are the board's console (the
# update protocol), stderr carries the figures ("FP ..." lines).
#
#   micropython -X heapsize=N -c "import mp_agent_life" < host bytes > device bytes 2> figures
#
# The job (mp_agent_job.json beside this file): flash (a folder mounted at /fleetpin, as the
# board's LittleFS), rounds, app_rounds, window_ms, host ("api.bench.test"), good and bad (ports of
# loopback TLS servers: one serves the pinned chain, one a chain the bundle does not pin), first
# (the version installed at the start), update (whether a host connects in the listening window).
#
# A round is a wake of the board, as main.py runs it: pinagent.io.board.start() boots the agent from flash;
# console.serve() is the listening window (with a host: HELLO, IDENTIFY, an update with its
# signature check, the reports read and acknowledged, REBOOT, which ends the session); then the
# application, app_rounds times: a pinned connection (allowed, one line exchanged) and one the
# pin check refuses (a report written). A process starts like a board after reset; a second
# round in it boots again from what the last one left in flash, with the modules the last one
# loaded still there (and the strings they interned, which MicroPython never frees): more than
# a board holds after machine.reset(), so later rounds are the harder ones. Printed after each
# stage: live heap after a collection.
import gc
import sys

gc.collect()


def _mem():
    gc.collect()
    return gc.mem_alloc()


def _say(*parts):
    sys.stderr.write(" ".join([str(p) for p in parts]) + "\n")


START = _mem()


def _noop():
    pass


class _Os:
    """The board's os for the store: the unix port's VfsPosix mounted on a folder renames wrongly
    (both paths share one buffer), so renames go by the folder's own path on the root VFS."""

    def __init__(self, os, flash):
        self.os = os
        self.flash = flash

    def rename(self, a, b):
        self.os.rename(self.flash + a[9:], self.flash + b[9:])  # a[9:]: after "/fleetpin"

    def stat(self, p):
        return self.os.stat(p)

    def listdir(self, p):
        return self.os.listdir(p)

    def mkdir(self, p):
        self.os.mkdir(p)

    def remove(self, p):
        self.os.remove(p)

    def statvfs(self, p):
        return self.os.statvfs(p)


def _start(fs):
    # what main.py runs (pinagent.io.board.start), with the board's file system passed in
    try:
        from pinagent.io import board, console
    except Exception as e:
        return None, repr(e)
    return console, board.start(fs)


def _app(agent, job):
    sock = agent.connect(job["host"], job["good"])
    try:
        sock.write(b"ping\n")
        line = sock.readline()
    finally:
        sock.close()
    sock = None
    if line != b"HELLO\n" or agent.last_verdict.reason != "matched":
        raise AssertionError("pinned connection: %r %s" % (line, agent.last_verdict.reason))
    try:
        agent.connect(job["host"], job["bad"]).close()
    except Exception as e:  # connect.PinBlocked: a report is written
        if getattr(e, "reason", None) != "mismatch":
            raise
    else:
        raise AssertionError("the unpinned chain was let through")


def main():
    import json

    f = open("mp_agent_job.json")
    job = json.loads(f.read())
    f.close()
    json = f = None
    import vfs

    vfs.mount(vfs.VfsPosix(job["flash"]), "/fleetpin")
    vfs = None
    import os

    _say("FP start", START, _mem())
    version = job["first"]
    for i in range(job["rounds"]):
        import main  # the board's main.py, source compiled here as on the board

        from pinagent.store import FS

        console, agent = _start(FS(_Os(os, job["flash"]), open))
        st = agent.state
        if console is None or st is None or st.mode != "ok" or st.version != version:
            raise AssertionError("boot: %r" % ((agent if console is None else (st.mode, st.version, st.problems)),))
        st = FS = None
        _say("FP booted", i, _mem())
        console.serve(agent, window_ms=job["window_ms"], ctrl_c_after=False, reset=_noop)
        if job["update"]:
            version += 1
            if agent.state.version != version:
                raise AssertionError("update: version %r, expected %d" % (agent.state.version, version))
        _say("FP served", i, _mem())
        for j in range(job["app_rounds"]):
            _app(agent, job)
            _say("FP app", i, _mem())
        main = console = agent = None  # the reboot, but main.py and pinagent stay loaded (below)
        _say("FP round", i, _mem())
    _say("FP done", _mem())


try:
    main()
except BaseException as e:
    _say("FP failed", type(e).__name__, e)
    sys.print_exception(e, sys.stderr)
    sys.exit(3)
