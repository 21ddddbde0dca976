"""`fleetpin bundle inspect|diff|lint`: look at a bundle or a policy file without installing it.

All three take a bundle file or a policy TOML file (fleetpin.bundle_view), and the lint rules
live in fleetpin.lint. Served chains (--chain FILE, --chain HOST=FILE, --host HOST:PORT) tell
lint and diff what servers present today, so they can say which devices would be locked out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from pinagent import bundle as dev_bundle
from pinagent import pins as dev_pins
from pinagent import policy as dev_policy
from pinagent import signers as dev_signers

from . import certs
from .bundle_view import BUNDLE, ServedChain, View, days_left, device_chain, iso_date, load_view, rules_for_chain
from .errors import FleetpinError, UsageError
from .lint import ERROR, MAX_HORIZON_DAYS, WARN_DAYS, Finding, has_errors, lint

_NOT_VERIFIED = "signatures not verified (pass --trust SIGNERS.json to verify them)"


def _now(text: str | None) -> int:
    from .cmd_check import parse_now

    now = parse_now(text)
    if now is None:
        raise UsageError("--now unknown: these checks need a time", hint="e.g. --now 2026-05-01T12:00:00Z")
    return now


def _pin(digest: bytes) -> str:
    return "sha256/" + str(dev_pins.pin_to_text(digest))


# --- inspect ---------------------------------------------------------------------------------


def inspect_obj(view: View, now: int, signatures: dict[str, Any]) -> dict[str, Any]:
    """Everything `bundle inspect --json` prints."""
    header = None
    if view.header is not None:
        header = {**view.header, "issued_iso": iso_date(view.header["issued"]),
                  "digest": view.digest.hex() if view.digest else None, "size": view.size}
    return {
        "file": str(view.path),
        "kind": view.kind,
        "signatures": signatures,
        "header": header,
        "unpinned": view.policy.unpinned,
        "domains": [_domain_obj(r, now) for r in view.rules],
        "ca_certs": [{"subject": ca.subject, "pin": "sha256/" + ca.pin, "sha256": ca.fingerprint,
                      "expires": iso_date(ca.not_after), "expires_at": ca.not_after,
                      "days_left": days_left(ca.not_after, now)} for ca in view.ca_certs],
        "report": view.effective_report,
        "report_defaults": view.effective_report == dev_bundle.REPORT_DEFAULTS,
        "signers": view.signers,
        "now": now,
    }


def _domain_obj(r: dev_policy.Rule, now: int) -> dict[str, Any]:
    return {
        "host": r.host,
        "include_subdomains": r.include_subdomains,
        "enforce": r.enforce,
        "mode": "enforce" if r.enforce else "report-only",
        "expires": iso_date(r.expires),
        "expires_at": r.expires,
        "days_left": days_left(r.expires, now),
        "on_expiry": r.on_expiry,
        "pins": [{"pin": _pin(d), "label": label} for d, label in zip(r.pins, r.labels)],
    }


def load_trust(path: Path) -> dev_signers.SignerSet:
    """The signer set in `path` (fleetpin key signers), for --trust and --new-signers."""
    try:
        trust: dev_signers.SignerSet = dev_signers.load_signers(path.read_bytes())
    except OSError as e:
        raise UsageError(f"--trust {path}: cannot read: {e.strerror or e}") from None
    except dev_signers.SignerSetError as e:
        raise UsageError(f"--trust {path}: {e.reason}", hint="pass a signer set made by `fleetpin key signers`") from None
    return trust


def check_signatures(view: View, trust_path: Path | None) -> dict[str, Any]:
    """{"verified": False, "status": ...} without --trust; verified, or FleetpinError, with it."""
    if trust_path is None:
        return {"verified": False, "status": _NOT_VERIFIED if view.kind == BUNDLE else "a policy file: not signed",
                "signed_by": []}
    if view.kind != BUNDLE or view.data is None:
        raise UsageError(f"--trust: {view.path} is a policy file, not a signed bundle")
    trust = load_trust(trust_path)
    env = dev_bundle.parse_envelope(view.data)
    try:
        dev_bundle.check_signatures(env, trust, env.digest())
    except dev_bundle.BundleSignatureError as e:
        raise FleetpinError(f"{view.path}: signatures do not verify: {e.reason}",
                            hint="check --trust is the signer set the devices hold") from None
    names = {s["id"]: s.get("name", "") for s in trust.to_obj()["signers"]}
    signed = [{"key_id": k, "name": names[k]} for k in view.header["key_ids"] if k in names] if view.header else []
    return {"verified": True, "status": "signatures verified with " + str(trust_path), "signed_by": signed}


def print_inspect(obj: dict[str, Any]) -> None:
    h = obj["header"]
    click.echo(f"{obj['file']}: {obj['kind']}; {obj['signatures']['status']}")
    if h is not None:
        click.echo(f"  format {h['format']}  fleet {h['fleet']}  version {h['version']}  channel {h['channel']}")
        click.echo(f"  issued {h['issued_iso']}  key ids {', '.join(h['key_ids'])}")
        click.echo(f"  digest {h['digest']}  {h['size']} bytes")
        for s in obj["signatures"]["signed_by"]:
            click.echo(f"  signed by {s['name'] or '(unnamed)'} ({s['key_id']}): verified")
    click.echo(f"domains ({len(obj['domains'])}); hosts without a rule: {obj['unpinned']}")
    for d in obj["domains"]:
        sub = " (and subdomains)" if d["include_subdomains"] else ""
        left = d["days_left"]
        when = f"{left} days left" if left >= 0 else f"EXPIRED {-left} days ago"
        click.echo(f"  {d['host']}{sub}  {d['mode']}  expires {d['expires']} ({when})  on expiry: {d['on_expiry']}")
        for p in d["pins"]:
            click.echo(f"      {p['pin']}  {p['label'] or ''}".rstrip())
    click.echo(f"CA certificates ({len(obj['ca_certs'])})")
    for ca in obj["ca_certs"]:
        click.echo(f"  {ca['subject']}\n      {ca['pin']}  expires {ca['expires']} ({ca['days_left']} days left)")
    r = obj["report"]
    click.echo(f"reports: {'enabled' if r['enabled'] else 'disabled'}, up to {r['max_entries']} entries / "
               f"{r['max_bytes']} bytes" + (" (defaults)" if obj["report_defaults"] else ""))
    if obj["signers"] is not None:
        s = obj["signers"]
        keys = ", ".join(f"{k.get('name', '')} ({k['id']})" for k in s["signers"])
        click.echo(f"signer-set rotation: devices that install this bundle trust only these {s['channel']} keys "
                   f"from then on: {keys}")


@click.command("inspect")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--trust", "trust_path", type=click.Path(dir_okay=False, path_type=Path),
              help="verify the signatures against this signer set (fleetpin key signers)")
@click.option("--now", "now_text", metavar="ISO8601", help="count days left from this time (default: now)")
@click.option("--json", "as_json", is_flag=True, help="print everything as JSON")
def inspect(source: Path, trust_path: Path | None, now_text: str | None, as_json: bool) -> None:
    """Show what a bundle (or a policy file) holds: header, domains and pins, CA certificates,
    report settings, signer-set rotation. No trust needed: the signatures are only checked
    with --trust (exit 1 if they do not verify)."""
    view = load_view(source)
    obj = inspect_obj(view, _now(now_text), check_signatures(view, trust_path))
    if as_json:
        click.echo(json.dumps(obj, indent=2))
    else:
        print_inspect(obj)


# --- served chains -----------------------------------------------------------------------------


def load_chains(chain_args: Sequence[str], host_args: Sequence[str], ca_path: Path | None,
                views: Sequence[View], timeout: float = 20.0) -> list[ServedChain]:
    """--chain FILE | HOST=FILE and --host HOST:PORT as served chains. A live server's chain is
    taken as served when the views carry CA certificates: lint and diff validate it against
    them, as devices do and as for --chain (FP011 for one that fails, instead of stopping here).
    With --ca it is validated against those CAs here, without CAs anywhere against the system
    store."""
    from .cmd_check import load_chain

    out: list[ServedChain] = []
    for arg in chain_args:
        host, sep, file = arg.partition("=")
        if sep and host and not Path(arg).exists():
            out.append(ServedChain(file, load_chain(Path(file)), host))
        else:
            out.append(ServedChain(arg, load_chain(Path(arg))))
    verify = ca_path is not None or not any(v.ca_certs for v in views)
    for arg in host_args:
        target = certs.parse_host(arg)
        records = certs.load_host(target, ca_path, timeout, verify=verify)
        out.append(ServedChain(str(target), [r.der for r in records if r.der is not None], target.host))
    return out


_chain_options = [
    click.option("--chain", "chain_args", multiple=True, metavar="FILE|HOST=FILE",
                 help="a chain a server presents now (PEM/DER, leaf first); FILE maps to the domain its leaf's "
                      "SAN/CN falls under, HOST=FILE to HOST's. Repeatable."),
    click.option("--host", "host_args", multiple=True, metavar="HOST:PORT",
                 help="fetch the chain a live server presents (openssl s_client). Repeatable."),
    click.option("--ca", "ca_path", type=click.Path(dir_okay=False, path_type=Path),
                 help="CA certificates to validate --host connections with (default: the bundle's)"),
    click.option("--now", "now_text", metavar="ISO8601", help="the time to check against (default: now)"),
]


def chain_options(f: Any) -> Any:
    for option in reversed(_chain_options):
        f = option(f)
    return f


# --- lint ----------------------------------------------------------------------------------------


_MARK = {"error": ("ERROR", "red"), "warning": ("warning", "yellow"), "info": ("info", "cyan")}


def print_findings(findings: Sequence[Finding], err: bool = False) -> None:
    for f in findings:
        word, colour = _MARK[f.severity]
        click.secho(f"{f.rule} {word}: {f.message}", fg=colour, err=err)
        click.echo(f"      fix: {f.hint}", err=err)


def summary_line(findings: Sequence[Finding]) -> str:
    counts = {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning", "info")}
    return ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items())


@click.command("lint")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@chain_options
@click.option("--max-horizon", type=click.IntRange(1), default=MAX_HORIZON_DAYS, show_default=True,
              help="days ahead beyond which an expiry is flagged (FP005)")
@click.option("--warn-days", type=click.IntRange(0), default=WARN_DAYS, show_default=True,
              help="days ahead within which an expiry is flagged (FP006, FP016)")
@click.option("--json", "as_json", is_flag=True, help="print the findings as JSON")
@click.pass_context
def lint_cmd(ctx: click.Context, source: Path, chain_args: tuple[str, ...], host_args: tuple[str, ...],
             ca_path: Path | None, now_text: str | None, max_horizon: int, warn_days: int, as_json: bool) -> None:
    """Check a policy file or bundle for the mistakes that lock devices out: too few pins, no
    backup outside the served chain, a served chain no pin matches, expiry, malformed pins,
    public-suffix wildcards, missing CA certificates, report-only domains.

    \b
    Give the chains servers present today to check them too:
      fleetpin bundle lint policy.toml --chain api.example.com=chain.pem --host api.example.com:443
    Exit codes: 0 no errors (warnings allowed), 1 errors, 2 usage.
    """
    now = _now(now_text)
    view = load_view(source, lenient=True)
    chains = load_chains(chain_args, host_args, ca_path, [view])
    findings = lint(view, chains, now=now, max_horizon_days=max_horizon, warn_days=warn_days)
    if as_json:
        click.echo(json.dumps({"file": str(source), "kind": view.kind, "now": now, "ok": not has_errors(findings),
                               "chains": [c.source for c in chains],
                               "findings": [f.to_obj() for f in findings]}, indent=2))
    else:
        print_findings(findings)
        click.echo(f"{source}: {summary_line(findings)}")
    if has_errors(findings):
        ctx.exit(1)


# --- diff ----------------------------------------------------------------------------------------


def _pins_of(r: dev_policy.Rule) -> dict[bytes, str | None]:
    return dict(zip(r.pins, r.labels))


def _pin_list(pins: dict[bytes, str | None], keys: Sequence[bytes]) -> list[dict[str, Any]]:
    return [{"pin": _pin(k), "label": pins[k]} for k in keys]


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
        if "fleet" in header:
            risk("bundle", f"devices of fleet {old.header['fleet']} refuse the new bundle (it is for fleet "
                           f"{new.header['fleet']})")
        if "channel" in header:
            risk("bundle", f"devices trusting {old.header['channel']} keys refuse the new "
                           f"{new.header['channel']} bundle")
        if new.header["version"] <= old.header["version"]:
            risk("bundle", f"devices with version {old.header['version']} installed refuse version "
                           f"{new.header['version']} (rollback or no-op): raise --version")

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
            "labels": {_pin(k): [pa[k], pb[k]] for k in pb if k in pa and pa[k] != pb[k]},
            "changes": {},
        }
        for key in ("include_subdomains", "enforce", "expires", "on_expiry"):
            if getattr(a, key) != getattr(b, key):
                entry["changes"][key] = [getattr(a, key), getattr(b, key)]
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
        "old": str(old.path), "new": str(new.path), "now": now,
        "header": header,
        "unpinned": header_unpinned,
        "domains": {"added": [_domain_obj(new_rules[h], now) for h in added],
                    "removed": [_domain_obj(old_rules[h], now) for h in removed],
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
    v = dev_policy.decide(view.policy, host, dc.digests, t, dc.verified)
    return {"allowed": v.allowed, "reason": v.reason}


def print_diff(d: dict[str, Any]) -> None:
    click.echo(f"--- {d['old']}\n+++ {d['new']}")
    for key, (a, b) in d["header"].items():
        click.echo(f"  {key}: {a} -> {b}")
    if d["unpinned"]:
        click.echo(f"  hosts without a rule: {d['unpinned'][0]} -> {d['unpinned'][1]}")
    for r in d["domains"]["added"]:
        click.echo(f"+ domain {r['host']} ({r['mode']}, expires {r['expires']}): "
                   + ", ".join(p["pin"] for p in r["pins"]))
    for r in d["domains"]["removed"]:
        click.echo(f"- domain {r['host']}")
    for c in d["domains"]["changed"]:
        click.echo(f"~ domain {c['host']}")
        for p in c["pins_added"]:
            click.echo(f"    + pin {p['pin']} {p['label'] or ''}".rstrip())
        for p in c["pins_removed"]:
            click.echo(f"    - pin {p['pin']} {p['label'] or ''}".rstrip())
        for pin, (a, b) in c["labels"].items():
            click.echo(f"    label of {pin}: {a} -> {b}")
        for key, (a, b) in c["changes"].items():
            if key == "expires":
                a, b = iso_date(a), iso_date(b)
            click.echo(f"    {key}: {a} -> {b}")
    for ca in d["ca_certs"]["added"]:
        click.echo(f"+ CA {ca['subject']} ({ca['pin']})")
    for ca in d["ca_certs"]["removed"]:
        click.echo(f"- CA {ca['subject']} ({ca['pin']})")
    for key, (a, b) in d["report"].items():
        click.echo(f"  report.{key}: {a} -> {b}")
    if d["new_signers"]:
        click.echo("  installs a new signer set: " + ", ".join(s["id"] for s in d["new_signers"]["signers"]))
    for c in d["chains"]:
        click.echo(f"  {c['source']} ({c['host']}): old {c['old']['reason']}, new {c['new']['reason']} "
                   f"(at {c['from']})")
    click.echo("what devices will start to refuse:" + ("" if d["refuse"] else " nothing found"))
    for r in d["refuse"]:
        click.secho(f"  ! {r['message']}", fg="red")


@click.command("diff")
@click.argument("old_path", metavar="OLD", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("new_path", metavar="NEW", type=click.Path(dir_okay=False, path_type=Path))
@chain_options
@click.option("--json", "as_json", is_flag=True, help="print the differences as JSON")
def diff(old_path: Path, new_path: Path, chain_args: tuple[str, ...], host_args: tuple[str, ...],
         ca_path: Path | None, now_text: str | None, as_json: bool) -> None:
    """What changes from OLD to NEW (bundles or policy files): header, domains and pins, expiry
    and enforcement, CA certificates, report settings, signer set; and what devices will start
    to refuse. With --chain/--host, the old and new verdict for what servers present today.

    Exit codes: 0 (differences are not a failure), 2 unreadable or invalid input.
    """
    now = _now(now_text)
    old, new = load_view(old_path), load_view(new_path)
    d = diff_views(old, new, load_chains(chain_args, host_args, ca_path, [old, new]), now)
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        print_diff(d)


# --- bundle build's gate ---------------------------------------------------------------------------


def lint_gate(view: View, allow_errors: bool, now: int | None = None) -> list[Finding]:
    """Lints what `bundle build` is about to sign: refuses lint errors (FleetpinError) unless
    allow_errors, which is announced loudly. Prints nothing when there are no findings."""
    findings = lint(view, now=int(time.time()) if now is None else now)
    errors = [f for f in findings if f.severity == ERROR]
    if errors and not allow_errors:
        print_findings(errors, err=True)
        raise FleetpinError(f"{view.path}: {len(errors)} lint error(s): not signing this bundle",
                            hint=f"fix them (fleetpin bundle lint {view.path}), or pass --allow-lint-errors "
                                 "if you really mean to ship it")
    if errors:
        click.secho(f"WARNING: signing a bundle with {len(errors)} lint error(s) because of --allow-lint-errors:",
                    fg="red", bold=True, err=True)
        print_findings(errors, err=True)
    others = len(findings) - len(errors)
    if others:
        click.echo(f"lint: {summary_line(findings)} (fleetpin bundle lint {view.path})", err=True)
    return findings
