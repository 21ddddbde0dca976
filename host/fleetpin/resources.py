"""Where the files that ship with fleetpin are: the agent that goes onto boards (`device`), the
board definitions (`boards`) and the example policy (`examples`).

A wheel carries them as package data under fleetpin/shipped/ (pyproject.toml maps the
repository's folders there), so an installed fleetpin never needs a checkout. In a checkout
(an editable install, for development) the import system may not see those mapped folders;
then they are the repository's own folders, which are the same files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fleetpin.errors import FleetpinError

SHIPPED = ("device", "boards", "examples")


def shipped_dir(name: str) -> Path:
    """The folder `name` (one of SHIPPED) as installed, or in the checkout this module sits in."""
    if name not in SHIPPED:
        raise ValueError(name)
    try:
        spec = importlib.util.find_spec(f"fleetpin.shipped.{name}")
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location).is_dir():
                return Path(location)
    checkout = Path(__file__).resolve().parents[2] / name  # host/fleetpin/ -> the repository
    if checkout.is_dir():
        return checkout
    raise FleetpinError(
        f"fleetpin's {name}/ files are missing from this installation",
        hint="reinstall fleetpin (pip install --force-reinstall fleetpin)",
    )
