"""`make demo`: the whole fleetpin story on a virtual fleet, no hardware.

Every step is a real `fleetpin` command, printed as you would type it and run in-process, so
the output teaches the CLI. Everything is written under ./demo-out (wiped at the start); the
TLS servers listen on 127.0.0.1 only and stop at the end.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import click

from .cli import main as fleetpin_main
from .sim.pki import Pki, make_pki
from .sim.tlsserver import LOOPBACK, TlsServer

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
        click.secho(f"━━ {self.step}. {title} " + "━" * max(3, 66 - len(title)), fg="cyan", bold=True)
        if text:
            click.echo(click.wrap_text(text, 90))

    def note(self, text: str) -> None:
        click.secho(click.wrap_text(text, 90, initial_indent="  ", subsequent_indent="  "), dim=True)

    def run(self, *args: str | Path, expect: int = 0) -> int:
        argv = [str(a) for a in args]
        click.secho("$ fleetpin " + " ".join(shlex.quote(self.short(a)) for a in argv), fg="green")
        code = fleetpin_main(argv)
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
    return s


def summary(s: Story, started: float) -> None:
    click.echo()
    click.secho("━━ Summary " + "━" * 60, fg="cyan", bold=True)
    width = max(len(w) for w, _ in s.outcomes)
    for what, result in s.outcomes:
        click.echo(f"  {what:<{width}}  {result}")
    click.echo(f"\n  demo finished in {time.monotonic() - started:.0f} s; files are in {s.out}")


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0] if argv else "demo-out").resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.monotonic()
    try:
        s = story(out)
    except DemoFailed as e:
        click.secho(f"\ndemo failed: {e}", fg="red", err=True)
        return 1
    summary(s, started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
