"""The bundles this host has built, verified or read, kept by SHA-256 in the user's cache
directory ($XDG_CACHE_HOME/fleetpin/bundles, else ~/.cache/fleetpin/bundles), so that
`fleetpin device update` can show what a device's installed bundle changes without reading it
back over a slow serial line: IDENTIFY's bundle_sha256 names it.

    remember(data)          keeps a copy (never raises: a cache that cannot be written is skipped)
    lookup(sha256_hex)      the bundle's bytes, or None (a file whose digest does not match is
                            ignored: the cache is a convenience, never trusted for content)

Only bytes that start as a bundle does (FPB1 magic) are kept; nothing is ever signed or
trusted because it is in the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from pinagent import bundle as dev_bundle

_HEX = re.compile(r"^[0-9a-f]{64}$")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fleetpin" / "bundles"


def remember(data: bytes) -> Path | None:
    """Keeps the bundle under its SHA-256; returns the path, or None if it was not kept."""
    if data[:4] != dev_bundle.MAGIC or len(data) > dev_bundle.MAX_BUNDLE:
        return None
    digest = hashlib.sha256(data).hexdigest()
    path = cache_dir() / f"{digest}.fpb"
    try:
        if path.is_file() and path.stat().st_size == len(data):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def lookup(sha256_hex: str | None) -> bytes | None:
    """The cached bundle whose SHA-256 is sha256_hex, or None."""
    if not sha256_hex or not _HEX.match(sha256_hex):
        return None
    try:
        data = (cache_dir() / f"{sha256_hex}.fpb").read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256_hex else None
