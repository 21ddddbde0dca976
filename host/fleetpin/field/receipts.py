"""Receipts: the record a field update leaves, whatever its outcome.

One JSON file per attempt, written atomically (temp file, then rename) so a receipt is either
whole or absent. Fields:
    format 1, kind "device-update", result ("installed" | "already-installed" | "refused" |
    "failed" | "aborted" | "interrupted": Ctrl-C), error and hint (null on success),
    board_state (in words: what the device runs and holds after this attempt), port, device_id,
    fleet, old {version, sha256, id}, new {version, sha256, id} (what the device reported
    afterwards, or the bundle's own fields when it never got that far), bundle_file, started and
    finished (RFC 3339 UTC), duration_s, transfer (wire bytes sent, retransmissions, resent:
    requests sent again by op), tool ("fleetpin X.Y").
    `id` is the bundle's identity: the SHA-256 of its signed bytes (pinagent.bundle), the same
    for every encoding of one bundle; `sha256` is of the file's bytes, for the transfer check.
    (Agents before bundle ids report no id: null.)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleetpin import __version__
from fleetpin.errors import UsageError
from fleetpin.files import write_atomic

RESULTS = ("installed", "already-installed", "refused", "failed", "aborted", "interrupted")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Receipt:
    port: str
    bundle_file: str
    started: str = field(default_factory=utc_now)
    result: str = "failed"
    error: str | None = None
    hint: str | None = None
    board_state: str | None = None
    device_id: str | None = None
    fleet: str | None = None
    old: dict[str, Any] = field(default_factory=lambda: {"version": None, "sha256": None, "id": None})
    new: dict[str, Any] = field(default_factory=lambda: {"version": None, "sha256": None, "id": None})
    finished: str | None = None
    duration_s: float | None = None
    transfer: dict[str, Any] = field(default_factory=dict)

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"format": 1, "kind": "device-update"}
        obj.update(asdict(self))
        obj["tool"] = f"fleetpin {__version__}"
        return obj


def default_path(device_id: object, when: str) -> Path:
    """receipt-DEVICE-TIME.json in the current folder; DEVICE is what the device said it is
    (untrusted: anything but letters, digits, '.', '_' and '-' becomes '_', at most 64 of
    them), or unknown-device."""
    name = device_id if isinstance(device_id, str) and device_id.strip(". ") else "unknown-device"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64].lstrip(".") or "unknown-device"
    return Path(f"receipt-{safe}-{when.replace(':', '').replace('-', '')}.json")


def check_writable(path: Path) -> None:
    """UsageError now, before anything is sent, if the receipt could not be written later. The
    probe is a temporary file created exclusively (never through a symlink) in the folder."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"cannot write the receipt {path}: {e.strerror or e} (nothing sent)",
                         hint="pass --receipt with a writable path") from None


def write_receipt(path: Path, receipt: Receipt) -> Path:
    """Writes the receipt atomically; UsageError if the place cannot be written."""
    try:
        return write_atomic(path, json.dumps(receipt.to_obj(), indent=2, sort_keys=True) + "\n")
    except UsageError as e:
        raise UsageError(f"cannot write the receipt {path}: {e}", hint="pass --receipt with a writable path") from None
