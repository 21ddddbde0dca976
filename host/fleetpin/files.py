"""Writing the files fleetpin produces: whole or not at all, with a clear error."""

from __future__ import annotations

import os
from pathlib import Path

import click

from fleetpin.errors import UsageError


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Writes `data` to `path` through a temporary file and a rename (a crash or a full disk
    never leaves half a bundle, signer set or receipt), creating its folder; UsageError naming
    the file if it cannot be written."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise UsageError(f"{path}: cannot write: {e.strerror or e}", hint="check the path: its folder must be a writable directory") from None
    return path


def write_output(out_file: Path | None, text: str, done: str) -> None:
    """`text` on standard output, or written to out_file (its folder created) and then
    "OUT_FILE: done" on stderr. Shared with `fleetpin import`."""
    if out_file is None:
        click.echo(text, nl=False)
        return
    write_atomic(out_file, text)
    click.echo(f"{out_file}: {done}", err=True)
