"""Fixtures shared by the production-line host tests (image, provision). The signed bundle and
signer set an image carries are tests/fakefirmware.py's BUNDLE and SIGNERS."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def device_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo's agent package with a stand-in main.py (device/main.py is written elsewhere)."""
    d = tmp_path_factory.mktemp("device")
    (d / "pinagent").symlink_to(REPO / "device" / "pinagent")
    (d / "main.py").write_text("import pinagent\nprint('agent up')\n")
    (d / "manifest.py").write_text((REPO / "device" / "manifest.py").read_text())
    return d


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """fleetpin keeps bundles it built or read in the user's cache directory: never the real one
    in tests (one per test module's session is enough)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
