"""Writing the files fleetpin produces: whole or not at all, with a clear error."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError


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
