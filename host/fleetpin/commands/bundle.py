"""`fleetpin bundle build` and `fleetpin bundle verify`: signed pin bundles (pinagent.bundle).

The subcommands that only look at bundles (inspect, diff, lint) live in cmd_bundle_tools and
are added to this group at the end of this module. `build` runs the lint rules first and
refuses to sign a bundle with lint errors unless --allow-lint-errors is given.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from pinagent import bundle as dev_bundle
from pinagent import signers as dev_signers

from . import keys
from .bundle_build import build_bundle, load_bundle_source
from .bundle_view import view_of_source
from .cmd_bundle_tools import diff, inspect, lint_cmd, lint_gate, load_trust
from .files import write_atomic
from .errors import FleetpinError, UsageError
from .lint import has_errors
from .signing import CommandSigner, LocalKeySigner, Signer


@click.group()
def bundle() -> None:
    """Build, sign and verify pin bundles (what a field update installs on a device)."""


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
              help="a signer set file (fleetpin key signers) the bundle installs: key rotation")
@click.option("--issued", type=int, help="issue time, POSIX seconds UTC (default: now)")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help=f"file holding the key passphrase (else ${keys.PASSPHRASE_ENV}, else a prompt)")
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--allow-lint-errors", is_flag=True,
              help="sign even if `fleetpin bundle lint` finds errors (printed loudly): for emergencies only")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def build(
    policy: Path, fleet: str, version: int, key_args: tuple[Path, ...], sign_command: str | None, development: bool,
    new_signers: Path | None, issued: int | None, passphrase_file: Path | None, out_file: Path,
    allow_lint_errors: bool, as_json: bool,
) -> None:
    """Build and sign a bundle from POLICY.toml ([defaults], [[domain]], [bundle], [report]).

    \b
    Example:
      fleetpin bundle build policy.toml --fleet acme-sensors --version 7 \\
          --key keys/everyday.key.pem -o bundle-7.fpb
    """
    source = load_bundle_source(policy)
    # Before any passphrase prompt: a bundle that would lock devices out is not signed.
    findings = lint_gate(view_of_source(policy, source), allow_lint_errors)
    new_set = None
    if new_signers is not None:
        new_set = load_trust(new_signers).to_obj()
    signers = _signers_for(key_args, sign_command, passphrase_file)
    data = build_bundle(
        source, fleet=fleet, version=version, issued=int(time.time()) if issued is None else issued,
        development=development, signers=signers, new_signers=new_set,
    )
    write_atomic(out_file, data)
    b = dev_bundle.decode_unverified(data)
    summary = _summary(b)
    if as_json:
        click.echo(json.dumps({"file": str(out_file), **summary, "lint": [f.to_obj() for f in findings],
                               "lint_errors_allowed": allow_lint_errors and has_errors(findings)}))
        return
    click.echo(f"{out_file}: {b.channel} bundle v{b.version} for fleet {b.fleet}, {b.size} bytes")
    click.echo(f"  {summary['domains']} domains, {summary['ca_certs']} CA certificates, signed by "
               + ", ".join(s.info.name + " (" + s.info.key_id + ")" for s in signers))
    if b.signers is not None:
        click.echo(f"  installs a new signer set of {len(b.signers.signers)} keys (key rotation)")


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
data = open("/verify/bundle.bin", "rb").read()
trust = signers.load_signers(open("/verify/signers.json", "rb").read())
try:
    b = bundle.decode_bundle(data, trust, %r, %d, %s, %d)
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
            return _summary(dev_bundle.decode_bundle(data, trust, fleet, installed, now, floor))
        except dev_bundle.BundleError as e:
            return {"error": type(e).__name__, "reason": e.reason}
    from . import mpvm

    # run_steps, not run_python: this VM collects no garbage within a call, and one P-256
    # verification allocates ~0.8 MB of short-lived bigints, so the heap grows here where a board
    # would collect; the decoder's own heap use is measured in tests/host/test_bundle_cli.py.
    run = mpvm.run_steps(
        [f"import sys\nsys.path[:0] = [{mpvm.VM_DEVICE_DIR!r}]\n",
         _VM_VERIFY % (fleet, installed, "None" if now is None else str(now), floor)],
        {**mpvm.device_files(), "/verify/bundle.bin": data, "/verify/signers.json": trust_bytes},
    )
    failed = [step.error for step in run.steps if step.error]
    if failed:
        raise mpvm.VMError(failed[0] or "")
    out = "".join(step.stdout for step in run.steps)
    line = [x for x in out.splitlines() if x.startswith("FP-RESULT ")]
    if not line:
        raise FleetpinError("the VM printed no result:\n" + out)
    result: dict[str, Any] = json.loads(line[-1][len("FP-RESULT "):])
    return result


@bundle.command("verify")
@click.argument("bundle_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--trust", "trust_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the signer set the devices trust (fleetpin key signers)")
@click.option("--fleet", help="the devices' fleet id (default: the bundle's own, so not checked)")
@click.option("--installed-version", type=int, default=0, show_default=True, help="version installed on the device")
@click.option("--now", type=int, help="device clock, POSIX seconds (default: this computer's clock)")
@click.option("--time-floor", type=int, default=0, show_default=True, help="the device's trusted time floor")
@click.option("--runtime", type=click.Choice(["device", "micropython"]), default="device", show_default=True,
              help="device = the agent's decoder under CPython; micropython = the same code on the MicroPython VM")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def verify(
    bundle_file: Path, trust_file: Path, fleet: str | None, installed_version: int, now: int | None, time_floor: int,
    runtime: str, as_json: bool,
) -> None:
    """Check a bundle exactly as a device would: size, structure, signature, fleet, version,
    issue time, schema. Exit 0 if a device would install it (or already has this version),
    1 if it would refuse it."""
    data = bundle_file.read_bytes()
    trust = load_trust(trust_file)
    fleet_checked = fleet is not None
    if fleet is None:
        try:
            fleet = str(dev_bundle.parse_envelope(data).header["fleet"])
        except dev_bundle.BundleError:
            fleet = ""
    result = verify_bundle(
        data, trust_file.read_bytes(), trust, fleet, installed_version, int(time.time()) if now is None else now,
        time_floor, runtime,
    )
    error = result.get("error")
    status = "ok" if error is None else "same_version" if error == "BundleSameVersion" else "refused"
    result = {"result": status, "runtime": runtime, "fleet_checked": fleet_checked, **result}
    if as_json:
        click.echo(json.dumps(result))
    elif status == "ok":
        names = {s["id"]: s.get("name", "") for s in trust.to_obj()["signers"]}
        signed = ", ".join(f"{names[k]} ({k})" for k in result["key_ids"] if k in names)
        click.echo(f"ok: {result['channel']} bundle v{result['version']} for fleet {result['fleet']}"
                   + ("" if fleet_checked else " (fleet not checked: pass --fleet)"))
        click.echo(f"  signed by {signed}; {result['domains']} domains, {result['ca_certs']} CA certificates, "
                   f"{result['size']} bytes ({runtime})")
        if result["new_signers"]:
            click.echo(f"  installs a new signer set: {', '.join(result['new_signers'])}")
    elif status == "same_version":
        click.echo(f"no-op: {result['reason']} ({runtime})")
    if status == "refused":
        raise FleetpinError(f"{error}: {result['reason']}", hint=_HINTS.get(str(error)))


_HINTS = {
    "BundleTooLarge": "fewer domains or CA certificates",
    "BundleMalformed": "the file is damaged or not a fleetpin bundle: rebuild it with `fleetpin bundle build`",
    "BundleSignatureError": "sign with a key of the --trust signer set, of the bundle's channel",
    "BundleWrongFleet": "build it with the devices' --fleet",
    "BundleRollback": "build it with a --version above the installed one",
    "BundleFromFuture": "check the signing computer's clock, or --now",
    "BundleSchemaError": "this agent cannot read the bundle's contents: rebuild it with this fleetpin version",
}


bundle.add_command(inspect)
bundle.add_command(diff)
bundle.add_command(lint_cmd)
