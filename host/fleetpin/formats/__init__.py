"""A fleet's pins in the formats mobile apps ship. One module per format; to add one, write its
module (an `export_...(obj, source, options) -> ExportResult`) and add a line to EXPORTS."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fleetpin.formats.android import export_android
from fleetpin.formats.common import ExportOptions, ExportResult
from fleetpin.formats.okhttp import export_okhttp
from fleetpin.formats.trustkit import export_trustkit

EXPORTS: dict[str, Callable[..., ExportResult]] = {
    "android": export_android,
    "trustkit": export_trustkit,
    "okhttp": export_okhttp,
}
FORMATS = tuple(EXPORTS)


def export(fmt: str, obj: dict[str, Any], source: str, *, trustkit_format: str = "plist",
           report_uris: Sequence[str] = ()) -> ExportResult:
    return EXPORTS[fmt](obj, source, ExportOptions(trustkit_format, tuple(report_uris)))
