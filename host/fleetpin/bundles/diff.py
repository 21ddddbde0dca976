"""The complete difference between two bundles (or policy files): header, signers, CA
certificates, domains and pins, and what served chains would meet under each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleetpin.bundles.inspect import domain_obj, pin_text
from fleetpin.bundles.view import ServedChain, View, device_chain, iso_date, rules_for_chain
from pinagent import policy as dev_policy


def _pins_of(r: dev_policy.Rule) -> dict[bytes, str | None]:
    return dict(zip(r.pins, r.labels))


def _pin_list(pins: dict[bytes, str | None], keys: Sequence[bytes]) -> list[dict[str, Any]]:
    return [{"pin": pin_text(k), "label": pins[k]} for k in keys]


def diff_views(old: View, new: View, chains: Sequence[ServedChain], now: int) -> dict[str, Any]:
    """Everything `bundle diff --json` prints. `refuse` lists what devices will start to refuse."""
    refuse: list[dict[str, Any]] = []

    def risk(kind: str, message: str, domain: str | None = None) -> None:
        refuse.append({"kind": kind, "domain": domain, "message": message})

    header: dict[str, list[Any]] = {}
    if old.header is not None and new.header is not None:
        for key in ("fleet", "version", "channel", "issued", "key_ids"):
            if old.header[key] != new.header[key]:
                header[key] = [old.header[key], new.header[key]]
                if key == "issued":  # times are ISO 8601, as everywhere fleetpin prints them
                    header[key] = [iso_date(t) for t in header[key]]
        if "fleet" in header:
            risk("bundle", f"devices of fleet {old.header['fleet']} refuse the new bundle (it is for fleet "
                           f"{new.header['fleet']})")
        if "channel" in header:
            risk("bundle", f"devices trusting {old.header['channel']} keys refuse the new "
                           f"{new.header['channel']} bundle")
        if new.header["version"] <= old.header["version"]:
            unless = (" unless a key its new signer set retires signed their version (the reset after a stolen key)"
                      if new.signers is not None else "")
            risk("bundle", f"devices with version {old.header['version']} installed refuse version "
                           f"{new.header['version']} (rollback or no-op){unless}: raise --version")

    old_rules = {r.host: r for r in old.rules}
    new_rules = {r.host: r for r in new.rules}
    added = [h for h in new_rules if h not in old_rules]
    removed = [h for h in old_rules if h not in new_rules]
    changed: list[dict[str, Any]] = []
    for host in (h for h in new_rules if h in old_rules):
        a, b = old_rules[host], new_rules[host]
        pa, pb = _pins_of(a), _pins_of(b)
        entry: dict[str, Any] = {
            "host": host,
            "pins_added": _pin_list(pb, [k for k in pb if k not in pa]),
            "pins_removed": _pin_list(pa, [k for k in pa if k not in pb]),
            "labels": {pin_text(k): [pa[k], pb[k]] for k in pb if k in pa and pa[k] != pb[k]},
            "changes": {},
        }
        for key in ("include_subdomains", "enforce", "expires", "on_expiry"):
            if getattr(a, key) != getattr(b, key):
                entry["changes"][key] = [getattr(a, key), getattr(b, key)]
                if key == "expires":
                    entry["changes"][key] = [iso_date(t) for t in entry["changes"][key]]
        if any(entry[k] for k in ("pins_added", "pins_removed", "labels", "changes")):
            changed.append(entry)
        if b.enforce and entry["pins_removed"]:
            for p in entry["pins_removed"]:
                risk("pin_removed", f"{host}: a server presenting {p['pin']} ({p['label'] or 'no label'}) is "
                                    "refused once the new bundle is installed", host)
        if not a.enforce and b.enforce:
            risk("enforce", f"{host}: report-only -> enforce: mismatches that were only reported are refused", host)
        if a.on_expiry == "fallback" and b.on_expiry == "enforce":
            risk("on_expiry", f"{host}: on_expiry fallback -> enforce: after {iso_date(b.expires)} devices keep "
                              "refusing unpinned keys instead of falling back to CA validation", host)
        if b.expires < a.expires and b.on_expiry == "fallback":
            risk("expiry_earlier", f"{host}: expiry moved {(a.expires - b.expires) // 86400} days earlier, to "
                                   f"{iso_date(b.expires)}: from then the pins no longer vouch for a server and CA "
                                   "validation alone decides (a chain the bundle's CAs do not validate is refused)",
                 host)
        if a.expires <= now < b.expires and b.on_expiry == "fallback":
            risk("expiry_renewed", f"{host}: the pins had expired ({iso_date(a.expires)}) and are enforced again "
                                   f"until {iso_date(b.expires)}", host)
    for host in added:
        r = new_rules[host]
        if r.enforce:
            risk("domain_added", f"{host}: newly pinned: servers presenting none of its "
                                 f"{len(r.pins)} pins are refused", host)
    for host in removed:
        base = old_rules[host].base
        other = new.policy.rule_for(base if old_rules[host].kind == dev_policy.EXACT else "wildcard-probe." + base)
        if other is not None:
            risk("domain_removed", f"{host}: now falls under {other.host}, with its pins", host)
        elif new.policy.unpinned == "block":
            risk("domain_removed", f"{host}: no rule any more, and unpinned = block: refused", host)
    if old.policy.unpinned != new.policy.unpinned:
        header_unpinned = [old.policy.unpinned, new.policy.unpinned]
        if new.policy.unpinned == "block":
            risk("unpinned", "hosts without a rule are refused (unpinned ca -> block)")
    else:
        header_unpinned = []

    old_cas = {ca.der: ca for ca in old.ca_certs}
    new_cas = {ca.der: ca for ca in new.ca_certs}
    ca_added = [_ca_obj(ca) for der, ca in new_cas.items() if der not in old_cas]
    ca_removed = [_ca_obj(ca) for der, ca in old_cas.items() if der not in new_cas]
    for ca in ca_removed:
        risk("ca_removed", f"chains anchored at {ca['subject']} no longer validate (unless they reach another CA "
                           "of the new bundle): refused")
    report = {} if old.effective_report == new.effective_report else {
        k: [old.effective_report[k], new.effective_report[k]] for k in old.effective_report
        if old.effective_report[k] != new.effective_report[k]}
    signers = None
    if new.signers is not None and new.signers != old.signers:
        signers = new.signers
        ids = ", ".join(s["id"] for s in new.signers["signers"])
        risk("signers", f"devices that install the new bundle refuse later bundles not signed by one of: {ids}")

    chain_results = [c for chain in chains for c in _chain_changes(old, new, chain, now)]
    for c in chain_results:
        if c["old"]["allowed"] and not c["new"]["allowed"]:
            risk("chain", f"{c['host']}: {c['source']} is refused from {c['from']} ({c['new']['reason']}; "
                          f"allowed with the old policy: {c['old']['reason']})", c["rule"])
    return {
        "old": str(old.path), "new": str(new.path), "now": iso_date(now),
        "header": header,
        "unpinned": header_unpinned,
        "domains": {"added": [domain_obj(new_rules[h], now) for h in added],
                    "removed": [domain_obj(old_rules[h], now) for h in removed],
                    "changed": changed},
        "ca_certs": {"added": ca_added, "removed": ca_removed},
        "report": report,
        "new_signers": signers,
        "chains": chain_results,
        "refuse": refuse,
    }


def _ca_obj(ca: Any) -> dict[str, Any]:
    return {"subject": ca.subject, "pin": "sha256/" + ca.pin, "expires": iso_date(ca.not_after)}


def _chain_changes(old: View, new: View, chain: ServedChain, now: int) -> list[dict[str, Any]]:
    """The old and new verdict for a served chain, at the first moment (now, or just after an
    expiry) where they differ most: allowed before, refused after; else now."""
    out = []
    hosts = {h for v in (old, new) for h, _ in rules_for_chain(v.policy, chain)} or set(chain.names()[:1])
    for host in sorted(hosts):
        moments = [now] + sorted({r.expires for v in (old, new) if (r := v.policy.rule_for(host)) is not None
                                  and r.expires > now})
        verdicts = [(t, _verdict(old, chain, host, t), _verdict(new, chain, host, t)) for t in moments]
        pick = next((x for x in verdicts if x[1]["allowed"] and not x[2]["allowed"]), verdicts[0])
        rule = new.policy.rule_for(host) or old.policy.rule_for(host)
        out.append({"source": chain.source, "host": host, "rule": rule.host if rule else None,
                    "from": iso_date(pick[0]), "old": pick[1], "new": pick[2]})
    return out


def _verdict(view: View, chain: ServedChain, host: str, t: int) -> dict[str, Any]:
    dc = device_chain(chain, host, view.ca_certs, t)
    v = dev_policy.decide(view.policy, host, dc.digests, t, dc.verified, 0, t)  # t: authenticated time
    return {"allowed": v.allowed, "reason": v.reason}
