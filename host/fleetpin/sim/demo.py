"""`fleetpin demo` (and `make demo`): the whole fleetpin story on a virtual fleet, no hardware.

Every step is a real `fleetpin` command, printed as you would type it and run in-process, so
the output teaches the CLI. Everything is written under the --out folder (fleetpin-demo; a previous demo's is replaced); the
TLS servers listen on 127.0.0.1 only and stop at the end.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import click

from fleetpin.cli import main as fleetpin_main
from fleetpin.errors import UsageError
from fleetpin.field.transport import Transport
from fleetpin.output import secho
from fleetpin.pki.certs import load_file
from fleetpin.sim.board import VirtualBoard
from fleetpin.sim.firmware import stand_in_firmware
from fleetpin.sim.pki import Pki, make_pki
from fleetpin.sim.tlsserver import LOOPBACK, TlsServer

API_HOST = "api.fleet.test"
FLEET = "acme-sensors"
PASSPHRASE = "demo passphrase: never use a passphrase from a demo"


class DemoFailed(Exception):
    pass


class Story:
    """Prints sections and commands, runs them, and remembers what happened for the summary."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.step = 0
        self.outcomes: list[tuple[str, str]] = []

    def section(self, title: str, text: str = "") -> None:
        self.step += 1
        click.echo()
        secho(f"━━ {self.step}. {title} " + "━" * max(3, 66 - len(title)), fg="cyan", bold=True)
        if text:
            click.echo(click.wrap_text(text, 90))

    def note(self, text: str) -> None:
        secho(click.wrap_text(text, 90, initial_indent="  ", subsequent_indent="  "), dim=True)

    def run(self, *args: str | Path, expect: int = 0) -> int:
        argv = [str(a) for a in args]
        secho("$ fleetpin " + " ".join(shlex.quote(self.short(a)) for a in argv), fg="green")
        code = fleetpin_main(argv, refusal_expected=expect == 1)
        if code != expect:
            raise DemoFailed(f"`fleetpin {' '.join(argv)}` exited {code}, expected {expect}")
        return code

    def short(self, arg: str) -> str:
        """Paths under the demo directory are shown relative to it: the commands read as typed."""
        prefix = str(self.out) + os.sep
        return arg.replace(prefix, "")

    def outcome(self, what: str, result: str) -> None:
        self.outcomes.append((what, result))


@contextmanager
def servers(pki: Pki, names: list[str]) -> Iterator[dict[str, TlsServer]]:
    """One loopback TLS server per leaf name of the demo PKI (e.g. "leaf", "backup_leaf")."""
    with ExitStack() as stack:
        yield {name: stack.enter_context(TlsServer(pki.chain_pem(name), getattr(pki, name).key_pem)) for name in names}


def write_policy(path: Path, pki: Pki, backup_pin: str, version_note: str) -> None:
    path.write_text(
        f"""# Demo policy ({version_note}): which keys {API_HOST} may present to the fleet.
[defaults]
enforce = true
expires = {time.strftime('%Y-%m-%d', time.gmtime(time.time() + 180 * 86400))}
on_expiry = "fallback"
unpinned = "ca"

[[domain]]
host = "{API_HOST}"
pins = [
  {{ pin = "sha256/{pki.leaf.pin}", label = "primary" }},
  {{ pin = "sha256/{backup_pin}", label = "backup (offline key)" }},
]

[bundle]
ca_certs = ["pki/root.pem"]
""",
        encoding="utf-8",
    )


def story(out: Path) -> Story:
    s = Story(out)
    pki = make_pki(API_HOST, namespace="fleetpin-demo")
    files = pki.write(out / "pki")
    keys = out / "keys"
    keys.mkdir()
    os.environ["FLEETPIN_KEY_PASSPHRASE"] = PASSPHRASE

    s.section(
        "A server and its pins",
        f"{API_HOST} is served on 127.0.0.1 by a chain from the demo CA. A pin is the SHA-256 of a "
        "public key; the fleet will accept the server only if one of its keys is pinned.",
    )
    with servers(pki, ["leaf"]) as srv:
        port = srv["leaf"].port
        s.run("pin", "--host", f"{API_HOST}:{port}@{LOOPBACK}", "--ca", files.cert("root"))

    s.section(
        "Keys: two bundle signers and a backup TLS key",
        "The everyday signing key and an offline backup (losing one is survivable), and a backup "
        "TLS key whose private half goes offline: its pin ships now, so a server can switch to it "
        "without waiting for an update to reach every device.",
    )
    s.run("key", "new", "--signing", "--id", "ops", "-o", keys)
    s.run("key", "new", "--signing", "--id", "vault", "-o", keys)
    s.run("key", "signers", keys / "ops.pub.json", keys / "vault.pub.json", "-o", out / "signers.json")
    # The demo's servers need the backup key's certificate, so its key comes from the demo PKI;
    # `fleetpin key new --backup-pin` is how a real team makes one:
    s.run("key", "new", "--backup-pin", "--id", "api-backup", "-o", keys)
    s.run("pin", files.key("backup_leaf"))

    s.section("Policy, lint, signed bundle", "Two pins for the API (primary and backup), 180 days to expiry.")
    policy = out / "policy.toml"
    write_policy(policy, pki, pki.backup_leaf.pin, "version 1")
    with servers(pki, ["leaf"]) as srv:
        s.run("bundle", "lint", policy, "--host", f"{API_HOST}:{srv['leaf'].port}@{LOOPBACK}")
    s.run("bundle", "build", policy, "--fleet", FLEET, "--version", "1", "--key", keys / "ops.key.pem", "-o", out / "v1.fpb")
    s.run("bundle", "verify", out / "v1.fpb", "--trust", out / "signers.json", "--fleet", FLEET, "--runtime", "micropython")
    s.outcome("bundle v1", "signed, verified on the MicroPython VM")

    s.section(
        "What a device decides",
        "The device core's verdict for the chains a server might present: the primary key, the "
        "backup key, and a rogue CA's certificate for the same name.",
    )
    for name, expect in (("leaf", 0), ("backup_leaf", 0), ("rogue_leaf", 1)):
        chain = files.chain(name)
        s.run("check", "--policy", policy, "--host", API_HOST, chain, expect=expect)
        s.outcome(f"check {name}", "allowed" if expect == 0 else "blocked")

    fleet_dir = out / "fleet"
    production_line(s, out, fleet_dir)
    with ExitStack() as stack:
        srv = stack.enter_context(servers(pki, ["leaf", "backup_leaf", "rogue_leaf"]))
        boards = boot_fleet(s, stack, fleet_dir)
        field_story(s, out, pki, srv, boards, keys, policy)
    s.section("Rehearse before production does it for real",
              "Drills on fresh virtual fleets: the CA is distrusted (which bundles survive, and the update "
              "that rescues the rest), a CA the bundle trusts mis-issues a certificate for the API, and a "
              "stolen signing key installs the highest version (the rotation that retires it resets the fleet).")
    for drill in ("ca-distrusted", "rogue-ca", "stolen-signing-key"):
        s.run("drill", drill, "--devices", "3")
        s.outcome(f"drill {drill}", "passed: every device accounted for, none unreachable")
    return s


def production_line(s: Story, out: Path, fleet_dir: Path) -> None:
    s.section(
        "The production line",
        "One verified image (firmware + a LittleFS filesystem holding the agent, the bundle and the "
        "signer set), then three stations flashed at once by the real esptool through the ROM "
        "bootloader emulator. Each board then resets into the agent, which must report the image's "
        "bundle digest. The firmware is a stand-in with MicroPython's layout; the virtual board runs "
        "the image's main.py and agent on MicroPython's unix port, its filesystem the one esptool wrote.",
    )
    firmware = out / "firmware.bin"
    firmware.write_bytes(stand_in_firmware("esp32"))
    s.run("boards")
    s.run("image", "build", "--board", "esp32", "--firmware", firmware, "--bundle", out / "v1.fpb",
          "--signers", out / "signers.json", "-o", out / "image")
    s.run("image", "verify", out / "image")
    registry = out / "registry.sqlite"
    s.run("provision", "--board", "esp32", "--image", out / "image", "--virtual", "3", "--sim-dir", fleet_dir,
          "--registry", registry, "--operator", "demo")
    s.run("registry", "list", "--registry", registry)
    s.outcome("production line", "3 boards flashed, verified, recorded")


def boot_fleet(s: Story, stack: ExitStack, fleet_dir: Path) -> list[VirtualBoard]:
    s.section("The fleet in the field", "The three boards boot from the flash the line wrote.")
    boards = []
    for image in sorted(fleet_dir.glob("*.img")):
        board = stack.enter_context(VirtualBoard(flash=image, device_id="sim-" + image.stem))
        boards.append(board)
    s.run("device", "info", "--port", boards[0].port)
    return boards


def field_story(s: Story, out: Path, pki: Pki, srv: dict[str, TlsServer], boards: list[VirtualBoard],
                keys: Path, policy: Path) -> None:
    api, backup, rogue = (f"{API_HOST}:{srv[n].port}" for n in ("leaf", "backup_leaf", "rogue_leaf"))
    s.section("Devices connect", "Each device's own verdict, asked over serial: the real server, then a "
              "man in the middle with a certificate from a rogue CA. Neither its key nor its CA is in the "
              "bundle: the device refuses the chain (mbedTLS shows it to the pin check before failing its "
              "CA, so the verdict names the pin mismatch) and records a failure report (a CA the bundle "
              "does trust mis-issuing is caught by the pin check too: see the rogue-ca drill below).")
    for b in boards:
        s.run("device", "test-connect", "--port", b.port, api)
    s.run("device", "test-connect", "--port", boards[0].port, rogue, expect=1)
    s.run("device", "reports", "--port", boards[0].port)
    s.outcome("rogue CA", "blocked and reported")

    s.section("The primary key is lost", "The server moves to the backup key: the fleet keeps working "
              "through the backup pin, with no update.")
    for b in boards:
        s.run("device", "test-connect", "--port", b.port, backup)

    s.section("Field update", "Bundle v2 promotes the backup key and pins a new offline backup (made in "
              "step 2). Preflight against the live server, diff, then each device: diff, confirm, transfer, "
              "digest checked, receipt written.")
    new_backup = (keys / "api-backup.pub.pem")
    backup_pin = load_file(new_backup)[0].pin
    policy.write_text(policy.read_text(encoding="utf-8")
                      .replace(pki.leaf.pin, pki.backup_leaf.pin, 1)
                      .replace(f'{{ pin = "sha256/{pki.backup_leaf.pin}", label = "backup (offline key)" }}',
                               f'{{ pin = "sha256/{backup_pin}", label = "backup (offline key)" }}')
                      .replace("version 1", "version 2"), encoding="utf-8")
    s.run("bundle", "build", policy, "--fleet", FLEET, "--version", "2", "--key", keys / "ops.key.pem", "-o", out / "v2.fpb")
    s.run("bundle", "diff", out / "v1.fpb", out / "v2.fpb")
    s.run("preflight", out / "v2.fpb", "--host", f"{API_HOST}:{srv['backup_leaf'].port}@{LOOPBACK}")
    receipts = out / "receipts"
    receipts.mkdir()
    for b in boards:
        s.run("device", "update", "--port", b.port, out / "v2.fpb", "--yes", "--receipt", receipts / f"{b.device_id}.json")
    s.run("device", "test-connect", "--port", boards[0].port, backup)
    s.run("device", "test-connect", "--port", boards[0].port, api, expect=1)
    s.note("The old primary key is no longer pinned: a stolen copy of it is refused.")
    account(s, boards, API_HOST, srv["backup_leaf"].port)


def account(s: Story, boards: list[VirtualBoard], host: str, port: int) -> None:
    """Every device, asked over serial: its bundle, and its verdict for the live server."""
    for b in boards:
        with Transport.open(b.port) as t:
            t.connect()
            ident = t.call(t.client.identify(), "IDENTIFY")
            v = t.call(t.client.test_connect(host, port), "TEST_CONNECT")
        state = "connected" if v.get("allowed") else "NOT CONNECTED"
        s.outcome(f"device {b.device_id}", f"bundle v{ident.get('bundle_version')}, {state} ({v.get('reason')}, "
                  f"pin \"{v.get('matched_label')}\")")
        if not v.get("allowed"):
            raise DemoFailed(f"{b.device_id} cannot reach {host} at the end of the demo")


def summary(s: Story, started: float) -> None:
    click.echo()
    secho("━━ Summary " + "━" * 60, fg="cyan", bold=True)
    width = max(len(w) for w, _ in s.outcomes)
    for what, result in s.outcomes:
        click.echo(f"  {what:<{width}}  {result}")
    devices = [r for w, r in s.outcomes if w.startswith("device ")]
    reached = sum(1 for r in devices if ", connected" in r)
    secho(f"\n  every device accounted for: {reached} of {len(devices)} reach the server, "
                f"{len(devices) - reached} unreachable", fg="green" if reached == len(devices) else "red", bold=True)
    click.echo(f"  demo finished in {time.monotonic() - started:.0f} s; files are in {s.out}")


DEMO_MARK = ".fleetpin-demo"  # marks a folder this demo wrote, so a rerun may replace it


def run(out: Path) -> int:
    """Runs the story into `out`; 0 when every device is accounted for. A folder that holds
    anything but a previous demo's output is refused, never wiped."""
    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARK).is_file():
            raise UsageError(f"{out} is not empty and is not a previous demo's folder: not touching it",
                             hint="pass --out with a new or empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).write_text("written by fleetpin demo; it replaces this folder when run again\n")
    started = time.monotonic()
    saved = os.environ.get("FLEETPIN_KEY_PASSPHRASE")
    try:
        s = story(out)
    except DemoFailed as e:
        secho(f"\ndemo failed: {e}", fg="red", err=True)
        return 1
    finally:  # the demo's passphrase must not outlive it (tests run it in-process)
        if saved is None:
            os.environ.pop("FLEETPIN_KEY_PASSPHRASE", None)
        else:
            os.environ["FLEETPIN_KEY_PASSPHRASE"] = saved
    summary(s, started)
    return 0
