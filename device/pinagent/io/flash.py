"""The board's file system for pinagent.store and pinagent.reports: the real `os` and `open`
over LittleFS, plus the provisioning config the image builder writes.

    fs = filesystem()          store.FS(os, open)
    cfg = read_config(fs)      {"fleet": ..., "board": ..., "image_id": ...} or {} (never raises)
"""

import json

from pinagent.store import FS, ROOT

CONFIG = ROOT + "/config.json"
_MAX_CONFIG = 4096


def filesystem():
    import os

    return FS(os, open)


def read_config(fs, path=CONFIG):
    """The provisioning config as a dict; {} if it is missing or unreadable (the agent then
    adopts the fleet of its installed bundle)."""
    try:
        obj = json.loads(fs.read(path, _MAX_CONFIG))
    except Exception:
        return {}
    return obj if isinstance(obj, dict) else {}
