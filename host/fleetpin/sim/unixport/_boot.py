# A virtual board's start-up on MicroPython's unix port: what an ESP32's firmware does before
# and around main.py, with the unix port standing in for the chip.
#
#   micropython -X heapsize=NK _boot.py board.json     (in the host's folder for this board:
#                                                       flash image path and geometry, clock
#                                                       file, console tty, MAC; a file, since
#                                                       this port dies on an argument over 255 bytes)
#
# 1. The board support (this folder, on sys.path only until step 3) replaces the few modules
#    where the unix port differs from the ESP32 in a way the agent sees: machine (reset,
#    unique_id), time (the board's settable clock), socket (loopback network), micropython
#    (kbd_intr on the console). device/PORTS.md lists each difference.
# 2. The flash image's filesystem region is mounted at / with vfs.VfsLfs2 (flashbdev.FileFlash),
#    as ports/esp32/modules/_boot.py mounts the vfs partition; the host's files are unmounted.
# 3. sys.path is the ESP32's ("", ".frozen", "/lib"), then boot.py and main.py run from the
#    flash as pyexec_file_if_exists runs them. An exception is printed on the console.
# 4. When main.py returns (or fails), the REPL follows on the console, as on the board. A soft
#    reset (SystemExit, or Ctrl-D at the REPL) ends the process with code 0: the host boots
#    the board again.
import gc
import json
import os
import sys

import vfs

with open(sys.argv[1]) as _f:
    _cfg = json.load(_f)
_console_tty = open(_cfg["tty"], "rb")  # the console becomes this session's controlling terminal

import board_machine
import board_micropython
import board_socket
import board_time
import flashbdev

board_machine.init(bytes.fromhex(_cfg["mac"]))
board_micropython.init(_cfg["isig"], _cfg["vintr"])
board_time.init(_cfg["clock"])
sys.modules["machine"] = board_machine
sys.modules["micropython"] = board_micropython
sys.modules["socket"] = board_socket
sys.modules["time"] = board_time

_fs = vfs.VfsLfs2(
    flashbdev.FileFlash(_cfg["image"], _cfg["offset"], _cfg["block_size"], _cfg["block_count"]),
    readsize=_cfg["read_size"],
    progsize=_cfg["prog_size"],
    lookahead=_cfg["lookahead"],
)
vfs.umount("/")
vfs.mount(_fs, "/")
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
sys.argv[:] = []
del _f, _cfg, _fs, board_machine, board_micropython, board_socket, board_time, flashbdev, vfs, json


def _run(_name):
    try:
        os.stat(_name)
    except OSError:
        return
    try:
        with open(_name) as _f:
            _code = compile(_f.read(), _name, "exec")
        gc.collect()
        exec(_code, globals())
    except SystemExit:
        sys.exit(0)  # soft reset: the host boots the board again
    except BaseException as _e:  # printed on the console, then on to the REPL, as on the board
        sys.print_exception(_e)


gc.collect()
_run("boot.py")
_run("main.py")
os.putenv("MICROPYINSPECT", "1")  # main.py is over: the REPL takes the console
