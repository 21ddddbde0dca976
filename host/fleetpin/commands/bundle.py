"""`fleetpin bundle build` and `fleetpin bundle verify`: signed pin bundles (pinagent.bundle).

The subcommands that only look at bundles (inspect, diff, lint) live in cmd_bundle_tools and
are added to this group at the end of this module. `build` runs the lint rules first and
refuses to sign a bundle with lint errors unless --allow-lint-errors is given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from fleetpin import output, passphrase
from fleetpin.bundles.build import build_bundle, check_thresholds, load_bundle_source
from fleetpin.bundles.cache import remember
from fleetpin.bundles.chains import load_chains
from fleetpin.bundles.diff import diff_views
from fleetpin.bundles.inspect import check_signatures, inspect_obj, load_trust, needs_obj, signed_by, signers_text
from fleetpin.bundles.lint import (
    ERROR,
    LIMITS_CHECKED_ELSEWHERE,
    MAX_HORIZON_DAYS,
    RULES,
    WARN_DAYS,
    Finding,
    has_errors,
    lint,
)
from fleetpin.bundles.view import View, iso_date, load_view, view_of_source
from fleetpin.device_errors import hint_for
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.files import write_atomic
from fleetpin.output import secho
from fleetpin.pki import keys
from fleetpin.pki.signing import CommandSigner, LocalKeySigner, Signer
from fleetpin.times import now as clock_now
from fleetpin.times import parse_now, parse_time
from pinagent import bundle as dev_bundle
from pinagent import signers as dev_signers


@click.group()
def bundle() -> None:
    """Build, sign, verify, inspect, diff and lint pin bundles (what a field update installs on a
    device), and fetch the CA certificates a bundle must carry (fetch-cas)."""


def _signers_for(key_args: tuple[Path, ...], sign_command: str | None, passphrase_file: Path | None) -> list[Signer]:
    result: list[Signer] = []
    for arg in key_args:
        key_path, info_path = keys.paths_for(arg)
        if not info_path.exists():
            raise UsageError(f"--key {arg}: {info_path} is missing", hint="keep NAME.pub.json next to NAME.key.pem")
        info = keys.load_public_info(info_path)
        if sign_command:
            result.append(CommandSigner(sign_command, info))
            continue
        passphrase = keys.read_passphrase(passphrase_file, confirm=False, prompt=f"passphrase for key {info.name}")
        result.append(LocalKeySigner(keys.load_private_key(key_path, passphrase), info))
    return result


@bundle.command("build")
@click.argument("policy", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--fleet", required=True, help="fleet id: devices of another fleet refuse the bundle")
@click.option("--version", "version", type=int, required=True, help="bundle version: must grow with every release")
@click.option("--key", "key_args", multiple=True, type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="NAME.key.pem (or NAME.pub.json with --sign-command); repeat to add signatures")
@click.option("--sign-command", help="sign with this command instead of the local key (HSM, KMS): see fleetpin/signing.py")
@click.option("--development", is_flag=True, help="a development bundle: development keys only; production devices refuse it")
@click.option("--new-signers", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="a signer set file (fleetpin key signers) the bundle installs: key rotation; needs the rotation "
                   "threshold of the devices' current set (2 keys by default: --key everyday --key backup)")
@click.option("--trust", "trust_file", type=click.Path(dir_okay=False, path_type=Path),
              help="the signer set the devices hold now: refuse to build what its threshold would refuse")
@click.option("--issued", "issued_text", metavar="ISO8601|@SECONDS",
              help="issue time, e.g. 2026-05-01T12:00:00Z or @1777636800 (default: now)")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help=passphrase.OPTION_HELP)
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--allow-lint-errors", is_flag=True,
              help="sign even if `fleetpin bundle lint` finds errors (printed loudly): for emergencies only")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def build(
    policy: Path, fleet: str, version: int, key_args: tuple[Path, ...], sign_command: str | None, development: bool,
    new_signers: Path | None, trust_file: Path | None, issued_text: str | None, passphrase_file: Path | None,
    out_file: Path, allow_lint_errors: bool, as_json: bool,
) -> None:
    """Build and sign a bundle from POLICY.toml ([defaults], [[domain]], [bundle], [report]).

    \b
    Example:
      fleetpin bundle build policy.toml --fleet acme-sensors --version 7 \\
          --key keys/everyday.key.pem -o bundle-7.fpb
    """
    issued = clock_now() if issued_text is None else parse_time(issued_text, "--issued")
    source = load_bundle_source(policy)
    # Before any passphrase prompt: a bundle that would lock devices out is not signed.
    findings = lint_gate(view_of_source(policy, source), allow_lint_errors)
    new_set = None
    if new_signers is not None:
        new_set = load_trust(new_signers, "--new-signers", check_keys=True).to_obj()
    trust = load_trust(trust_file) if trust_file is not None else None
    # and before any passphrase prompt too: too few keys for the devices' threshold
    check_thresholds([_public_info(arg) for arg in key_args], new_set is not None, trust)
    signers = _signers_for(key_args, sign_command, passphrase_file)
    data = build_bundle(
        source, fleet=fleet, version=version, issued=issued,
        development=development, signers=signers, new_signers=new_set, trust=trust,
    )
    write_atomic(out_file, data)
    remember(data)  # so `device update` can show what it replaces without reading it back
    b = dev_bundle.decode_unverified(data)
    summary = _summary(b)
    by = [{"key_id": s.info.key_id, "name": s.info.name} for s in signers]
    needs = None if trust is None else needs_obj(trust.threshold, trust.rotation_threshold, b.signers is not None)
    if as_json:
        click.echo(json.dumps({"file": str(out_file), **summary, "signed_by": by, "needs": needs,
                               "lint": [f.to_obj() for f in findings],
                               "lint_errors_allowed": allow_lint_errors and has_errors(findings)}))
        return
    click.echo(f"{out_file}: {b.channel} bundle v{b.version} for fleet {b.fleet}, {b.size} bytes")
    click.echo(f"  {summary['domains']} domains, {summary['ca_certs']} CA certificates, signed by {signers_text(by)}")
    if trust is not None and needs is not None:
        click.echo(f"  {len(signed_by(summary['key_ids'], trust))} of the {len(trust.signers)} keys of {trust_file}; "
                   f"{needs['why']} needs {needs['keys']}")
    elif b.signers is not None:
        click.echo("  a signer-set change: devices need the rotation threshold of their set (2 keys unless it says "
                   "more; --trust SIGNERS.json checks it)")
    else:
        click.echo("  devices need the threshold of their signer set (1 key unless it says more; --trust SIGNERS.json "
                   "checks it)")
    if b.signers is not None:
        click.echo(f"  installs a new signer set of {len(b.signers.signers)} keys (key rotation): "
                   + keys.threshold_text(b.signers.threshold, b.signers.rotation_threshold, len(b.signers.signers)))


def _public_info(arg: Path) -> keys.PublicKeyInfo:
    info_path = keys.paths_for(arg)[1]
    if not info_path.exists():
        raise UsageError(f"--key {arg}: {info_path} is missing", hint="keep NAME.pub.json next to NAME.key.pem")
    return keys.load_public_info(info_path)


def _summary(b: Any) -> dict[str, Any]:
    return {
        "fleet": b.fleet, "version": b.version, "channel": b.channel, "issued": b.issued,
        "key_ids": [k.hex() for k in b.key_ids], "domains": len(b.policy.rules), "ca_certs": len(b.ca_certs),
        "new_signers": None if b.signers is None else [s.key_id.hex() for s in b.signers.signers],
        "digest": b.digest.hex(), "size": b.size,
    }


# Runs the same decoder on the MicroPython VM; prints one JSON line.
_VM_VERIFY = """
import json
from pinagent import bundle, signers
data = open(ROOT + "/bundle.bin", "rb").read()
trust = signers.load_signers(open(ROOT + "/signers.json", "rb").read(), False)
try:
    b = bundle.decode_bundle(data, trust, fleet=%r, installed_version=%d, now=%s, time_floor=%d)
    out = {"fleet": b.fleet, "version": b.version, "channel": b.channel, "issued": b.issued,
           "key_ids": [k.hex() for k in b.key_ids], "domains": len(b.policy.rules), "ca_certs": len(b.ca_certs),
           "new_signers": None if b.signers is None else [s.key_id.hex() for s in b.signers.signers],
           "digest": b.digest.hex(), "size": b.size}
except bundle.BundleError as e:
    out = {"error": type(e).__name__, "reason": e.reason}
print("FP-RESULT " + json.dumps(out))
"""


def verify_bundle(
    data: bytes, trust_bytes: bytes, trust: dev_signers.SignerSet, fleet: str, installed: int, now: int | None,
    floor: int, runtime: str,
) -> dict[str, Any]:
    """{"error": class name, "reason"} or the summary of the accepted bundle."""
    if runtime == "device":
        try:
            return _summary(dev_bundle.decode_bundle(data, trust, fleet=fleet, installed_version=installed, now=now,
                                                    time_floor=floor))
        except dev_bundle.BundleError as e:
            return {"error": type(e).__name__, "reason": e.reason}
    script = _VM_VERIFY % (fleet, installed, "None" if now is None else str(now), floor)
    if runtime == "micropython":  # real MicroPython collects garbage within a call, as a board does
        from fleetpin.vm import unix

        out = unix.run_with_files('ROOT = "verify"\n' + script,
                                  {"verify/bundle.bin": data, "verify/signers.json": trust_bytes}).stdout
    else:
        from fleetpin.vm import wasm

        # run_steps, not run_python: this VM collects no garbage within a call, and one P-256
        # verification allocates ~0.8 MB of short-lived bigints, so the heap grows here where a
        # board would collect; the decoder's own heap use is measured in tests/host/test_bundle_cli.py.
        run = wasm.run_steps(
            [f"import sys\nsys.path[:0] = [{wasm.VM_DEVICE_DIR!r}]\n", 'ROOT = "/verify"\n' + script],
            {**wasm.device_files(), "/verify/bundle.bin": data, "/verify/signers.json": trust_bytes},
        )
        failed = [step.error for step in run.steps if step.error]
        if failed:
            raise wasm.VMError(failed[0] or "")
        out = "".join(step.stdout for step in run.steps)
    line = [x for x in out.splitlines() if x.startswith("FP-RESULT ")]
    if not line:
        raise FleetpinError(f"pinagent printed no result on {runtime}:\n" + out)
    result: dict[str, Any] = json.loads(line[-1][len("FP-RESULT "):])
    return result


def _who(data: bytes, trust: dev_signers.SignerSet) -> dict[str, Any]:
    """Who of `trust` signed the bundle and what it needs (its header, signatures not checked
    here: verify_bundle's decoder does that); empty if the envelope is unreadable."""
    try:
        env = dev_bundle.parse_envelope(data)
    except dev_bundle.BundleError:
        return {}
    try:
        rotation = dev_bundle.decode_unverified(data).signers is not None
        needs: dict[str, Any] | None = needs_obj(trust.threshold, trust.rotation_threshold, rotation)
    except dev_bundle.BundleError:
        needs = None
    return {"signed_by": signed_by(env.header["key_ids"], trust), "needs": needs}


@bundle.command("verify")
@click.argument("bundle_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--trust", "trust_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the signer set the devices trust (fleetpin key signers)")
@click.option("--fleet", help="the devices' fleet id (default: the bundle's own, so not checked)")
@click.option("--installed-version", type=int, default=0, show_default=True, help="version installed on the device")
@click.option("--now", "now_text", metavar="ISO8601|@SECONDS|unknown",
              help="the device's clock, e.g. 2026-05-01T12:00:00Z or @1777636800; 'unknown' = never set "
                   "(default: this computer's clock)")
@click.option("--time-floor", "floor_text", metavar="ISO8601|@SECONDS",
              help="the device's trusted time floor (default: none, as on a new device)")
@click.option("--runtime", type=click.Choice(["device", "micropython", "wasm"]), default="device", show_default=True,
              help="device = the agent's decoder under CPython; micropython = the same code on real MicroPython "
                   "(the unix port); wasm = on the MicroPython WebAssembly VM")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def verify(
    bundle_file: Path, trust_file: Path, fleet: str | None, installed_version: int, now_text: str | None,
    floor_text: str | None, runtime: str, as_json: bool,
) -> None:
    """Check a bundle exactly as a device would: size, structure, signature, fleet, version,
    issue time, schema. Exit 0 if a device would install it (or already has this version),
    1 if it would refuse it."""
    now = parse_now(now_text)
    time_floor = 0 if floor_text is None else parse_time(floor_text, "--time-floor")
    data = bundle_file.read_bytes()
    trust = load_trust(trust_file)
    fleet_checked = fleet is not None
    if fleet is None:
        try:
            fleet = str(dev_bundle.parse_envelope(data).header["fleet"])
        except dev_bundle.BundleError:
            fleet = ""
    result = verify_bundle(
        data, trust_file.read_bytes(), trust, fleet, installed_version, now, time_floor, runtime,
    )
    error = result.get("error")
    status = "ok" if error is None else "same_version" if error == "BundleSameVersion" else "refused"
    if status != "refused":
        remember(data)
    result = {"result": status, "runtime": runtime, "fleet_checked": fleet_checked, **result, **_who(data, trust)}
    if as_json:
        click.echo(json.dumps(result))
    elif status == "ok":
        click.echo(f"ok: {result['channel']} bundle v{result['version']} for fleet {result['fleet']}"
                   + ("" if fleet_checked else " (fleet not checked: pass --fleet)"))
        needs = result["needs"]
        click.echo(f"  signed by {signers_text(result['signed_by'])}: {len(result['signed_by'])} of the "
                   f"{len(trust.signers)} trusted keys; {needs['why']} needs {needs['keys']}")
        click.echo(f"  {result['domains']} domains, {result['ca_certs']} CA certificates, {result['size']} bytes, "
                   f"id {result['digest'][:16]} ({runtime})")
        if result["new_signers"]:
            click.echo(f"  installs a new signer set: {', '.join(result['new_signers'])}")
    elif status == "same_version":
        click.echo(f"no-op: {result['reason']} ({runtime})")
    if status == "refused":
        raise FleetpinError(f"{error}: {result['reason']}", hint=hint_for(str(error)))






# --- inspect, lint, diff: look at a bundle or a policy file without installing it ----------------


def _now(text: str | None) -> int:
    now = parse_now(text)
    if now is None:
        raise UsageError("--now unknown: these checks need a time", hint="e.g. --now 2026-05-01T12:00:00Z")
    return now


# --- inspect ---------------------------------------------------------------------------------


def print_inspect(obj: dict[str, Any]) -> None:
    h = obj["header"]
    click.echo(f"{obj['file']}: {obj['kind']}; {obj['signatures']['status']}")
    if h is not None:
        click.echo(f"  format {h['format']}  fleet {h['fleet']}  version {h['version']}  channel {h['channel']}")
        click.echo(f"  issued {h['issued_iso']}  key ids {', '.join(h['key_ids'])}")
        click.echo(f"  id {h['digest']} (SHA-256 of the signed bytes)  {h['size']} bytes")
        for s in obj["signatures"]["signed_by"]:
            click.echo(f"  signed by {s['name'] or '(unnamed)'} ({s['key_id']}): verified")
    lead = f"; the clock may lead trusted time by {obj['clock_lead']} s at expiry" if obj["clock_lead"] else ""
    click.echo(f"domains ({len(obj['domains'])}); hosts without a rule: {obj['unpinned']}{lead}")
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
        names = ", ".join(f"{k.get('name', '')} ({k['id']})" for k in s["signers"])
        click.echo(f"signer-set rotation: devices that install this bundle trust only these {s['channel']} keys "
                   f"from then on: {names}; "
                   + keys.threshold_text(s.get("threshold", 1), s.get("rotation_threshold", 2), len(s["signers"])))


@click.command("inspect")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--trust", "trust_path", type=click.Path(dir_okay=False, path_type=Path),
              help="verify the signatures against this signer set (fleetpin key signers)")
@click.option("--now", "now_text", metavar="ISO8601|@SECONDS", help="count days left from this time (default: now)")
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


_chain_options = [
    click.option("--chain", "chain_args", multiple=True, metavar="FILE|HOST=FILE",
                 help="a chain a server presents now (PEM/DER, leaf first); FILE maps to the domain its leaf's "
                      "SAN/CN falls under, HOST=FILE to HOST's. Repeatable."),
    click.option("--host", "host_args", multiple=True, metavar="HOST:PORT",
                 help="fetch the chain a live server presents (openssl s_client). Repeatable."),
    click.option("--ca", "ca_path", type=click.Path(dir_okay=False, path_type=Path),
                 help="CA certificates to validate --host connections with (default: the bundle's)"),
    click.option("--now", "now_text", metavar="ISO8601|@SECONDS", help="the time to check against (default: now)"),
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
        secho(f"{f.rule} {word}: {f.message}", fg=colour, err=err)
        click.echo(f"      fix: {f.hint}", err=err)


def print_rules(as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"rules": [{"rule": r.id, "severity": r.severity, "catches": r.title, "fix": r.hint}
                                         for r in RULES.values()],
                               "checked_elsewhere": LIMITS_CHECKED_ELSEWHERE}, indent=2))
        return
    out = output.console()
    t = output.Table("rule", "severity", "catches", "fix")
    for r in RULES.values():
        word, colour = _MARK[r.severity]
        t.add(r.id, output.styled(r.severity, colour), r.title, r.hint)
    t.print(out)
    out.print(output.assemble("\n", LIMITS_CHECKED_ELSEWHERE))


def summary_line(findings: Sequence[Finding]) -> str:
    counts = {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning", "info")}
    return ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items())


@click.command("lint")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path), required=False)
@chain_options
@click.option("--max-horizon", type=click.IntRange(1), default=MAX_HORIZON_DAYS, show_default=True,
              help="days ahead beyond which an expiry is flagged (FP005)")
@click.option("--warn-days", type=click.IntRange(0), default=WARN_DAYS, show_default=True,
              help="days ahead within which an expiry is flagged (FP006, FP016)")
@click.option("--list-rules", is_flag=True, help="print every rule (id, severity, what it catches, how to fix) and exit")
@click.option("--json", "as_json", is_flag=True, help="print the findings (or with --list-rules, the rules) as JSON")
@click.pass_context
def lint_cmd(ctx: click.Context, source: Path | None, chain_args: tuple[str, ...], host_args: tuple[str, ...],
             ca_path: Path | None, now_text: str | None, max_horizon: int, warn_days: int, list_rules: bool,
             as_json: bool) -> None:
    """Check a policy file or bundle for the mistakes that lock devices out: too few pins, no
    backup outside the served chain, a served chain no pin matches, expiry, malformed pins,
    public-suffix wildcards, missing CA certificates, report-only domains, and every limit
    the device enforces on a bundle (size, CA certificates, report settings).

    \b
    Give the chains servers present today to check them too:
      fleetpin bundle lint policy.toml --chain api.example.com=chain.pem --host api.example.com:443
    Every rule, with how to fix what it finds: fleetpin bundle lint --list-rules
    Exit codes: 0 no errors (warnings allowed), 1 errors, 2 usage.
    """
    if list_rules:
        print_rules(as_json)
        return
    if source is None:
        raise UsageError("no policy or bundle to lint", hint="fleetpin bundle lint POLICY.toml (or --list-rules)")
    now = _now(now_text)
    view = load_view(source, lenient=True)
    chains = load_chains(chain_args, host_args, ca_path, [view])
    findings = lint(view, chains, now=now, max_horizon_days=max_horizon, warn_days=warn_days)
    if as_json:
        click.echo(json.dumps({"file": str(source), "kind": view.kind, "now": iso_date(now), "ok": not has_errors(findings),
                               "chains": [c.source for c in chains],
                               "findings": [f.to_obj() for f in findings]}, indent=2))
    else:
        print_findings(findings)
        click.echo(f"{source}: {summary_line(findings)}")
    if has_errors(findings):
        ctx.exit(1)


# --- diff ----------------------------------------------------------------------------------------


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
        secho(f"  ! {r['message']}", fg="red")


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


# --- fetch-cas: the fix for FP010 ------------------------------------------------------------------


@click.command("fetch-cas")
@click.argument("hosts", nargs=-1, required=True, metavar="HOST:PORT[@ADDRESS]...")
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              help="write the CA certificates here (PEM) instead of standard output")
@click.option("--ca", "ca_path", type=click.Path(dir_okay=False, path_type=Path),
              help="validate against only the CA certificates in this file (default: the system CA store)")
@click.option("--timeout", type=click.FloatRange(0.1), default=20.0, show_default=True,
              help="seconds to wait for each server's TLS handshake")
@click.option("--json", "as_json", is_flag=True, help="print what was found as JSON")
def fetch_cas(hosts: tuple[str, ...], out_file: Path | None, ca_path: Path | None, timeout: float,
              as_json: bool) -> None:
    """Fetch the chain each server presents, validate it (host name, dates, signatures) against
    the system CA store or only --ca FILE, and save the CA certificate it chains to: what
    `[bundle] ca_certs` must list for devices to validate that server (lint's FP010 and FP011).

    \b
    The trust anchor is saved, not the server's own certificates: it validates every
    certificate the server may present below it, so it survives certificate renewals.
    HOST:PORT@ADDRESS connects to ADDRESS and checks the name HOST.

    \b
    Example:
      fleetpin bundle fetch-cas api.example.com:443 ota.example.com:443 -o cas.pem
      then in the policy:  [bundle]  ca_certs = ["cas.pem"]

    \b
    Exit codes: 0 saved, 1 a server unreachable or its chain does not validate, 2 usage.
    """
    from fleetpin.pki.anchors import anchor_of, ca_file_store, system_store
    from fleetpin.pki.certs import parse_host

    targets = [parse_host(h) for h in hosts]
    store = ca_file_store(ca_path) if ca_path is not None else system_store()
    anchors = [anchor_of(t, store, timeout) for t in targets]
    unique = list({a.der: a for a in anchors}.values())
    text = "".join(a.pem for a in unique)
    if out_file is not None:
        write_atomic(out_file, text)
    if as_json:
        click.echo(json.dumps({
            "out": None if out_file is None else str(out_file), "validated_against": store.name,
            "servers": [{"host": str(a.target), "ca": a.subject, "pin": "sha256/" + a.pin,
                         "expires": iso_date(a.not_after), "chain_length": a.chain_length} for a in anchors],
            "pem": text if out_file is None else None,
        }, indent=2))
        return
    if out_file is None:
        click.echo(text, nl=False)
    report = out_file is None  # the PEM is on stdout: the report goes to stderr
    for a in anchors:
        click.echo(f"{a.target}: validated against {store.name}; chains to {a.subject} "
                   f"(sha256/{a.pin}, expires {iso_date(a.not_after)})", err=report)
    if out_file is not None:
        click.echo(f"{out_file}: {len(unique)} CA certificate{'s' if len(unique) != 1 else ''}; "
                   f'list it in the policy: [bundle] ca_certs = ["{out_file}"]')


# --- bundle build's gate ---------------------------------------------------------------------------


def lint_gate(view: View, allow_errors: bool, now: int | None = None) -> list[Finding]:
    """Lints what `bundle build` is about to sign: refuses lint errors (FleetpinError) unless
    allow_errors, which is announced loudly. Prints nothing when there are no findings."""
    findings = lint(view, now=clock_now() if now is None else now)
    errors = [f for f in findings if f.severity == ERROR]
    if errors and not allow_errors:
        print_findings(errors, err=True)
        raise FleetpinError(f"{view.path}: {len(errors)} lint error(s): not signing this bundle",
                            hint=f"fix them (fleetpin bundle lint {view.path}), or pass --allow-lint-errors "
                                 "if you really mean to ship it")
    if errors:
        secho(f"WARNING: signing a bundle with {len(errors)} lint error(s) because of --allow-lint-errors:",
                    fg="red", bold=True, err=True)
        print_findings(errors, err=True)
    others = len(findings) - len(errors)
    if others:
        click.echo(f"lint: {summary_line(findings)} (fleetpin bundle lint {view.path})", err=True)
    return findings


bundle.add_command(inspect)
bundle.add_command(diff)
bundle.add_command(lint_cmd)
bundle.add_command(fetch_cas)
