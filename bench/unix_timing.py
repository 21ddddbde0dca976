"""Timing on real MicroPython (the unix port, C hashlib and C bigints, as on the board): each
named block becomes a function, all are called in interleaved rounds in one process (so a busy
machine slows them alike), the first rounds are discarded, and the median per block is
returned in ms, minus an empty call's cost. Files are put beside the script (relative paths).
collect=True collects garbage before each call (not timed), so no block pays for another's
garbage: the calibration block (pidigits) is sensitive to it. prepare: code per block name, run
before each of its calls and not timed (e.g. what a block needs loaded). with_agent=False: pinagent is
not installed beside the script (a MicroPython with it frozen)."""

from __future__ import annotations

import json
import statistics
import textwrap
from collections.abc import Mapping

from fleetpin.vm import unix

_LOOP = """
import time, json, gc
_names = %r
_collect = %r
_fns = [globals()['_b_' + n] for n in _names]
_preps = [globals().get('_p_' + n) for n in _names]
_rows = []
for _r in range(%d):
    _row = []
    for _i, _f in enumerate(_fns):
        if _preps[_i] is not None:
            _preps[_i]()
        if _collect:
            gc.collect()
        _t = time.ticks_us()
        _f()
        _row.append(time.ticks_diff(time.ticks_us(), _t))
    _rows.append(_row)
print('FP-TIMES ' + json.dumps(_rows[%d:]))
"""


def median_ms(setup: str, blocks: Mapping[str, str], files: Mapping[str, bytes] = {}, *, rounds: int = 15,
              warmup: int = 3, heap_kb: int = 256, collect: bool = False,
              prepare: Mapping[str, str] = {}, with_agent: bool = True) -> dict[str, float]:
    names = ["empty", *blocks]
    fns = "def _b_empty():\n    pass\n" + "".join(
        f"def _b_{n}():\n{textwrap.indent(body, '    ')}\n" for n, body in blocks.items())
    fns += "".join(f"def _p_{n}():\n{textwrap.indent(body, '    ')}\n" for n, body in prepare.items())
    script = setup + "\n" + fns + _LOOP % (names, collect, warmup + rounds, warmup)
    out = unix.run_with_files(script, files, heap_kb=heap_kb, timeout=600, with_agent=with_agent).stdout
    line = next(x for x in out.splitlines() if x.startswith("FP-TIMES "))
    rows = json.loads(line[len("FP-TIMES "):])
    med = {n: statistics.median(r[i] for r in rows) / 1000 for i, n in enumerate(names)}
    return {n: med[n] - med["empty"] for n in blocks}
