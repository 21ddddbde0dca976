"""Fixtures shared by the host tests: the production-line ones (image, provision: the signed
bundle and signer set an image carries are tests/fakefirmware.py's BUNDLE and SIGNERS), and a
cheaper key derivation for tests that only need a key file.

Private keys are encrypted with scrypt at OWASP's cost (fleetpin.pki.keys.SCRYPT_*: about 0.3 s
per key written or read here), which dozens of tests creating and loading keys would pay again
and again. Within this process they use N=2^10, p=1 instead, except test_key_files.py, which
checks the real cost (and that keys below it are flagged). Keys written by a `fleetpin`
subprocess always get the real cost."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def device_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repo's device/ folder: the agent package (linked), main.py and the manifest.
    Virtual boards on the unix port run this main.py from the flash the image went to."""
    d = tmp_path_factory.mktemp("device")
    (d / "pinagent").symlink_to(REPO / "device" / "pinagent")
    (d / "main.py").write_bytes((REPO / "device" / "main.py").read_bytes())
    (d / "manifest.py").write_text((REPO / "device" / "manifest.py").read_text())
    return d


@pytest.fixture(autouse=True)
def _cheap_key_derivation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.module.__name__.endswith("test_key_files"):
        return
    from fleetpin.pki import keys

    monkeypatch.setattr(keys, "SCRYPT_N", 2**10)
    monkeypatch.setattr(keys, "SCRYPT_P", 1)


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """fleetpin keeps bundles it built or read in the user's cache directory: never the real one
    in tests (one per test module's session is enough)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
