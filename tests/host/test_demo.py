"""`make demo` is the main job: it must run to the end and account for every device. Its boards
run device/main.py on MicroPython's unix port (the default runtime)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from runtimes import needs_unix_port

from fleetpin import cli


@needs_unix_port
def test_demo_runs_the_whole_story(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo-out"
    assert cli.main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "every device accounted for: 3 of 3 reach the server, 0 unreachable" in text
    # what it left behind is real: signed bundles, a registry of 3 boards, receipts of the field update
    assert (out / "v1.fpb").read_bytes()[:4] == b"FPB1" and (out / "v2.fpb").exists()
    with sqlite3.connect(out / "registry.sqlite") as db:
        results = [r[0] for r in db.execute("select result from attempts")]
    assert results == ["provisioned"] * 3
    receipts = [json.loads(p.read_text()) for p in sorted((out / "receipts").glob("*.json"))]
    assert [r["result"] for r in receipts] == ["installed"] * 3
    assert all(r["new"]["version"] == 2 for r in receipts)


def test_demo_never_wipes_a_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    assert cli.main(["demo", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
    assert "not touching it" in capsys.readouterr().err
