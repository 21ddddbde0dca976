"""Where the registry is, as users give it (--registry URL, $FLEETPIN_REGISTRY), without loading
the database code: commands that only sometimes use the registry name their option with this."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_URL = "sqlite:///fleetpin-registry.sqlite"
ENV_VAR = "FLEETPIN_REGISTRY"
URL_HELP = ("Registry database: sqlite:///PATH (or a plain path) or postgresql://USER@HOST/DB "
            f"[env {ENV_VAR}; default {DEFAULT_URL}].")


def resolve_url(url: str | Path | None = None) -> str:
    """--registry, else $FLEETPIN_REGISTRY, else the default SQLite file."""
    if url is None or url == "":
        url = os.environ.get(ENV_VAR) or DEFAULT_URL
    return str(url) if isinstance(url, str) else f"sqlite:///{url}"
