"""`fleetpin pin`: print the pins of certificates, chains, keys, CSRs and live servers."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from fleetpin import output, passphrase
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.pki.certs import KeyRecord, PasswordSource, load_file, load_host, parse_host
from fleetpin.vm.pin_output import parse_pin_lines

RUNTIMES = ("host", "device", "micropython", "wasm")

HELP = """Print the pin of every certificate, key and CSR in FILE... and of every
certificate a live server presents (--host).

\b
A pin is base64(SHA-256(SubjectPublicKeyInfo)): it names a public KEY, not a
certificate, so it survives certificate renewals that keep the key. It is the
format of Android, TrustKit, OkHttp and HPKP, and what this prints:
  openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin -outform DER \\
    | openssl dgst -sha256 -binary | base64

\b
Which pin to put in a policy:
  - the leaf (depth 0) key: tightest; it must change whenever the server key
    does, so ALWAYS pin a backup key too: generate it now, keep it offline,
    pin it (`fleetpin pin backup.key` or its CSR), and rotate to it later;
  - an intermediate or root key (depth 1+): survives leaf rotations, but only
    means something because the device also validates the chain.
  Pin at least two keys per domain, or one lost key bricks the fleet.

\b
Inputs: PEM (any mix of CERTIFICATE, PUBLIC KEY, PRIVATE KEY, ENCRYPTED PRIVATE
KEY, RSA/EC PRIVATE KEY, CERTIFICATE REQUEST, PKCS7 blocks), DER (certificate,
chain, CSR, public or private key, PKCS#7, PKCS#12). Certificates in one file
are a chain: depth = position in the file. --host HOST:PORT fetches the chain
the server presents (with `openssl s_client`) and refuses it unless it
validates against the system CAs, or against only --ca FILE when given; with
--ca, the root it chains to is listed last. HOST:PORT@ADDRESS connects to
ADDRESS but still uses HOST for SNI and the name check.

\b
Certificate pins come from the SPKI bytes exactly as they stand in the
certificate. Keys hold no such bytes: their SPKI is re-encoded by
`cryptography`, which matches the certificate for ordinary RSA, EC and EdDSA
keys. --runtime device / micropython / wasm compute certificate pins with the
device agent's own code (under CPython / on real MicroPython 1.29, the unix
port with mbedTLS: pip install 'fleetpin[micropython]' / on the MicroPython
1.27 WebAssembly VM: needs Node.js) and fail if it disagrees with the host;
keys and CSRs are always pinned on the host.

\b
Output: `<pin>  depth N  <subject>` for certificates, `<pin>  <kind>
<description>` for keys and CSRs; `# source` headers when there are several.
A name with bytes its string type does not allow is shown escaped (\\xNN): the
certificate is pinned all the same. With several inputs, as with sha256sum, one
that cannot be read is reported on stderr and the others are still pinned.

\b
Examples:
  fleetpin pin fullchain.pem
  fleetpin pin --host api.example.com:443
  fleetpin pin --host api.internal:8443 --ca corp-root.pem --json
  fleetpin pin backup.key backup.csr
  fleetpin pin --passphrase-file pass.txt --json encrypted.key

\b
Exit codes: 0 ok, 1 server refused / TLS failure / runtimes disagree / one
of several inputs could not be pinned, 2 a single input unreadable (missing
file, unknown format, wrong passphrase)."""


@click.command("pin", help=HELP)
@click.argument("files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--host", "hosts", multiple=True, metavar="HOST:PORT",
              help="A live server whose presented chain to pin (repeatable).")
@click.option("--ca", "ca_file", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Validate --host chains against only these PEM CA certificates.")
@click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Passphrase of encrypted private keys / PKCS#12: " + passphrase.OPTION_HELP + ".")
@click.option("--timeout", default=10.0, show_default=True, metavar="SECONDS",
              help="Give up on a --host that has not completed the TLS handshake by then.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of records.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="host", show_default=True,
              help="Who computes certificate pins: the host, the device agent under CPython, "
                   "on real MicroPython (the unix port), or on the WebAssembly MicroPython VM.")
def pin(files: tuple[Path, ...], hosts: tuple[str, ...], ca_file: Path | None, passphrase_file: Path | None,
        timeout: float, as_json: bool, runtime: str) -> None:
    if not files and not hosts:
        raise UsageError("nothing to pin", hint="give certificate/key files, or --host HOST:PORT (see --help)")
    if ca_file is not None and not hosts:
        raise UsageError("--ca only applies to --host", hint="to pin a CA certificate, pass it as a FILE")

    def ask_password(source: str) -> bytes | None:
        return passphrase.read(passphrase_file, prompt=f"passphrase for {source}").encode()

    records, failed = _load_each(files, hosts, ca_file, ask_password, timeout)
    pins = {i: r.pin for i, r in enumerate(records)}
    computed_by = {i: "host" for i in pins}
    disagreements: list[str] = []
    if runtime != "host":
        cert_indexes = [i for i, r in enumerate(records) if r.kind == "certificate"]
        ders = [records[i].der or b"" for i in cert_indexes]
        agent_pins = {"device": device_pins, "micropython": micropython_pins, "wasm": wasm_pins}[runtime](ders)
        for i, agent_pin in zip(cert_indexes, agent_pins):
            computed_by[i] = runtime
            if agent_pin != pins[i]:
                disagreements.append(f"{_where(records[i])}: host {pins[i]}, {runtime} {agent_pin}")
            pins[i] = agent_pin
        if any(r.kind != "certificate" for r in records) and not as_json:
            click.echo("note: keys and CSRs are pinned on the host; --runtime applies to certificates",
                       err=True)

    if as_json:
        click.echo(json.dumps([_as_json(r, pins[i], computed_by[i]) for i, r in enumerate(records)], indent=2))
    else:
        _print_text(records, pins, several=len(files) + len(hosts) > 1)
    if failed:
        total = len(files) + len(hosts)
        raise FleetpinError(f"{len(failed)} of {total} inputs could not be pinned: {', '.join(failed)}",
                            hint="see the error for each above; the others were pinned")
    if disagreements:
        raise FleetpinError(
            f"the device agent ({runtime}) and the host disagree on {len(disagreements)} pin(s): "
            + "; ".join(disagreements),
            hint="a bug in pinagent's DER walk: report it with the certificate",
        )


def _load_each(files: Sequence[Path], hosts: Sequence[str], ca_file: Path | None, password: PasswordSource,
               timeout: float) -> tuple[list[KeyRecord], list[str]]:
    """The records of every input, in order. As sha256sum does, an input that cannot be read is
    reported on stderr and the others are still pinned (the command then exits 1); a single
    input that fails is simply the error."""
    targets = [parse_host(h) for h in hosts]  # a malformed HOST:PORT is a usage error before anything
    loads: list[tuple[str, Callable[[], list[KeyRecord]]]] = [
        *((str(f), functools.partial(load_file, f, password)) for f in files),
        *((str(t), functools.partial(load_host, t, ca_file, timeout)) for t in targets),
    ]
    if len(loads) == 1:
        return loads[0][1](), []
    records: list[KeyRecord] = []
    failed: list[str] = []
    for name, load in loads:
        try:
            records += load()
        except FleetpinError as e:
            failed.append(name)
            output.error(str(e), e.hint)
    return records, failed


def _where(record: KeyRecord) -> str:
    return f"{record.source}#{record.index}"


def _print_text(records: Sequence[KeyRecord], pins: dict[int, str], several: bool) -> None:
    source = None
    for i, r in enumerate(records):
        if several and r.source != source:
            source = r.source
            click.echo(f"# {source}")
        what = f"depth {r.depth}" if r.kind == "certificate" else r.kind
        note = f"  ({r.note})" if r.note else ""
        click.echo(f"{pins[i]}  {what}  {r.description}{note}")


def _as_json(r: KeyRecord, pin: str, runtime: str) -> dict[str, Any]:
    return {
        "file": None if r.from_host else r.source,
        "host": r.source if r.from_host else None,
        "index": r.index,
        "kind": r.kind,
        "depth": r.depth,
        "subject": r.subject,
        "key_type": r.key_type,
        "pin": pin,
        "spki_source": r.spki_source,
        "runtime": runtime,
        "note": r.note or None,
    }


# ---------------------------------------------------------------------------------------------
# The device agent's pins, to check it against the host (it must agree on every certificate).


def device_pins(ders: Sequence[bytes]) -> list[str]:
    """Pins by pinagent's own DER walk and hash, under CPython."""
    from pinagent import der as agent_der
    from pinagent import pins as agent_pins

    out = []
    for i, d in enumerate(ders):
        try:
            spki = agent_der.spki_of_certificate(d)
        except agent_der.DerError as e:
            raise FleetpinError(f"the device agent cannot parse certificate {i}: {e}",
                                hint="this device would refuse the connection; report it with the certificate")
        out.append(agent_pins.pin_to_text(agent_pins.spki_digest(spki)))
    return out


# One VM for all certificates, one top-level call per certificate: this VM collects garbage
# only between calls, so a single loop over every certificate would count all their garbage
# against the ESP32-sized heap at once (the heap check below would then fail for nothing).
_VM_SETUP = "import sys\nsys.path[:0] = [%r]\nfrom pinagent import der, pins\n"
_VM_STEP = """\
f = open('/fleetpin-pin-%(i)d.der', 'rb')
d = f.read()
f.close()
try:
    print('PIN', %(i)d, pins.pin_to_text(pins.spki_digest(der.spki_of_certificate(d))))
except der.DerError as e:
    print('ERR', %(i)d, e)
del f, d
"""


def wasm_pins(ders: Sequence[bytes], heap_kb: int = 100) -> list[str]:
    """Pins by pinagent on the WebAssembly MicroPython VM (ESP32-sized heap): one VM start for all."""
    if not ders:
        return []
    try:
        from fleetpin.vm import wasm
    except ImportError as e:
        raise FleetpinError(f"the MicroPython runtime is not available ({e})", hint="run `make setup`") from None
    files = {f"/fleetpin-pin-{i}.der": d for i, d in enumerate(ders)}
    steps = [_VM_SETUP % wasm.VM_DEVICE_DIR] + [_VM_STEP % {"i": i} for i in range(len(ders))]
    try:
        run = wasm.run_steps(steps, {**wasm.device_files(), **files}, heap_kb)
    except FleetpinError as e:
        raise FleetpinError(f"the MicroPython VM failed: {e}", hint="run `make setup`; or use --runtime device") from None
    failed = next((step.error for step in run.steps if step.error is not None), None)
    if failed is not None:
        raise FleetpinError(f"pinagent raised on the MicroPython VM:\n{failed}",
                            hint="a bug in pinagent: report it with the certificate")
    if run.heap_grew:
        raise FleetpinError(f"pinagent outgrew a {heap_kb} KB heap on the MicroPython VM "
                            f"({run.heap_total} bytes)", hint="a certificate this large may not fit on the device")
    out = "".join(step.stdout for step in run.steps)
    return parse_pin_lines(out, len(ders), "the MicroPython VM")


def micropython_pins(ders: Sequence[bytes]) -> list[str]:
    """Pins by pinagent (.mpy) on real MicroPython (the unix port), under a hard ESP32-sized heap."""
    from fleetpin.vm import unix

    return unix.micropython_pins(ders)
