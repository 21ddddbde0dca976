"""The complete difference between two bundles (fleetpin.bundles.diff.diff_views, the same
one `fleetpin bundle diff` prints), in the words a field technician reads before saying yes:
what the device will start and stop accepting, one line each, with every line that touches
security marked (who may sign later bundles, which CAs are trusted, pins turned off or only
reported, a fallback to plain CA validation).

    for line in describe(diff_views(old, new, [], now)): print(("! " if line.security else "  ") + line.text)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetpin.bundles.view import iso_date


@dataclass(frozen=True)
class Line:
    text: str
    security: bool = False  # marked: it widens what the device trusts, or changes who is trusted
    indent: int = 0


def _pin(p: dict[str, Any]) -> str:
    return f"{p['pin']}" + (f" ({p['label']})" if p.get("label") else "")


def describe(d: dict[str, Any]) -> list[Line]:
    """Lines for a diff_views result, in order: the bundle, domains, CAs, signers, reports,
    then what devices will start to refuse."""
    out: list[Line] = []
    h = d["header"]
    if "fleet" in h:
        out.append(Line(f"fleet changes: {h['fleet'][0]} -> {h['fleet'][1]}", True))
    if "version" in h:
        out.append(Line(f"bundle version {h['version'][0]} -> {h['version'][1]}"))
    if "channel" in h:
        out.append(Line(f"signing channel {h['channel'][0]} -> {h['channel'][1]}", True))
    if "key_ids" in h:
        out.append(Line(f"signed by key {', '.join(h['key_ids'][1])} (was {', '.join(h['key_ids'][0])})"))
    for r in d["domains"]["added"]:
        mode = "checked" if r["enforce"] else "REPORT-ONLY: a wrong key is only reported, not refused"
        out.append(Line(f"new pinned domain {r['host']}{' and its subdomains' if r['include_subdomains'] else ''}: "
                        f"{mode}; pins expire {r['expires']}", not r["enforce"]))
        for p in r["pins"]:
            out.append(Line(f"accepts server key {_pin(p)}", indent=1))
        if r["on_expiry"] == "fallback":
            out.append(Line(f"after {r['expires']}: falls back to CA validation only", True, 1))
    for r in d["domains"]["removed"]:
        out.append(Line(f"{r['host']}: NO LONGER PINNED: any server with a certificate from the bundle's CAs is "
                        "accepted", True))
    for c in d["domains"]["changed"]:
        out.append(Line(f"{c['host']}:"))
        for p in c["pins_added"]:
            out.append(Line(f"starts accepting server key {_pin(p)}", indent=1))
        for p in c["pins_removed"]:
            out.append(Line(f"stops accepting server key {_pin(p)}", indent=1))
        for pin, (a, b) in c["labels"].items():
            out.append(Line(f"key {pin} relabelled {a} -> {b}", indent=1))
        ch = c["changes"]
        if "enforce" in ch:
            if ch["enforce"][1]:
                out.append(Line("pins now ENFORCED: a wrong server key is refused (was only reported)", indent=1))
            else:
                out.append(Line("ENFORCEMENT OFF: a wrong server key is only reported, no longer refused", True, 1))
        if "on_expiry" in ch:
            if ch["on_expiry"][1] == "fallback":
                out.append(Line("after the pins expire: FALLS BACK to CA validation only (was: keep refusing)", True, 1))
            else:
                out.append(Line("after the pins expire: keeps refusing unpinned keys (was: fall back to CA validation)",
                                indent=1))
        if "expires" in ch:
            out.append(Line(f"pins expire {iso_date(ch['expires'][1])} (was {iso_date(ch['expires'][0])})", indent=1))
        if "include_subdomains" in ch:
            now_too = ch["include_subdomains"][1]
            out.append(Line("subdomains now pinned too" if now_too else "subdomains NO LONGER pinned", not now_too, 1))
    if d["unpinned"]:
        a, b = d["unpinned"]
        out.append(Line(f"hosts without a rule: {a} -> {b}" + (" (CA validation only)" if b == "ca" else " (refused)"),
                        b == "ca"))
    for ca in d["ca_certs"]["added"]:
        out.append(Line(f"TRUSTS A NEW CA: {ca['subject']} ({ca['pin']}, valid until {ca['expires']})", True))
    for ca in d["ca_certs"]["removed"]:
        out.append(Line(f"stops trusting CA {ca['subject']} ({ca['pin']})", True))
    for key, (a, b) in d["report"].items():
        out.append(Line(f"failure reports: {key} {a} -> {b}"))
    if d["new_signers"]:
        ids = ", ".join(f"{s.get('name') or s['id']} ({s['id']})" for s in d["new_signers"]["signers"])
        out.append(Line(f"CHANGES WHO MAY SIGN later bundles: only {ids}", True))
    for c in d["chains"]:
        out.append(Line(f"{c['source']} ({c['host']}): {c['old']['reason']} -> {c['new']['reason']} (from {c['from']})",
                        c["old"]["allowed"] != c["new"]["allowed"]))
    if d["refuse"]:
        out.append(Line("the device will start to refuse:"))
        for r in d["refuse"]:
            out.append(Line(r["message"], indent=1))
    return out
