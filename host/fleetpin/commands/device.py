"""`fleetpin device info|update|reports|test-connect|reboot`: one device over a serial cable.

For the field technician: a laptop, a USB cable, one device, no second chance. `update` says
what it is about to change (the complete difference, as `fleetpin bundle diff` computes it, in
plain words, security-relevant lines marked), refuses what the device would refuse before
sending a byte (another fleet, an older or the same version), asks, transfers with a progress
bar, commits, checks the digest the device reports, and writes a JSON receipt whatever the
outcome (Ctrl-C included). An interrupted update leaves the old bundle working (the agent
commits with one atomic rename); run it again and it resumes from the last byte the device
acknowledged.

The port: -p/--port, else $FLEETPIN_PORT, else the one ESP32-style USB serial device
(`fleetpin devices` lists them). The installed bundle is shown from the host's bundle cache
when IDENTIFY's digest names one it has (fleetpin.bundles.cache), and read back otherwise.

What the device sends is untrusted: its answers are type-checked (fleetpin.field.transport) and
every text from it goes through `printable` before it is shown; a malformed answer, or an
installed bundle that does not parse, is a clear error (and, for update, a receipt).

Exit codes: 0 ok, 1 refused or failed (the device unchanged unless the output says otherwise),
2 usage.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from fleetpin.bundles.cache import lookup, remember
from fleetpin.bundles.diff import diff_views
from fleetpin.bundles.diff_words import describe
from fleetpin.bundles.view import bundle_view, empty_view
from fleetpin.device_errors import is_refusal
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.field.ports import ENV_PORT, choose_port
from fleetpin.field.receipts import Receipt, check_writable, default_path, utc_now, write_receipt
from fleetpin.field.reports import parse_report_log, report_time
from fleetpin.field.transport import DEFAULT_BAUD, Transport, check_verdict, printable
from fleetpin.line.registry_url import ENV_VAR, URL_HELP
from pinagent import bundle as dev_bundle

PORT_HELP = (f"serial port of the device (e.g. /dev/ttyUSB0, COM3, or a `fleetpin sim board` pty); default: "
             f"${ENV_PORT}, else the one ESP32-style USB serial device (fleetpin devices)")


def _port_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--json", "as_json", is_flag=True, help="print the result as JSON")(f)
    f = click.option("--timeout", type=click.FloatRange(0.5, 600), default=10.0, show_default=True,
                     help="seconds without a byte from the device before giving up")(f)
    f = click.option("--baud", "-b", type=click.IntRange(300, 4_000_000), default=DEFAULT_BAUD, show_default=True,
                     help="line rate")(f)
    f = click.option("--port", "-p", default=None, help=PORT_HELP)(f)
    return f


@click.group()
def device() -> None:
    """Talk to one device over serial: inspect it, update its pin bundle, read its reports.

    \b
    Exit codes: 0 ok, 1 refused or failed, 2 usage error.
    """


@contextmanager
def _session(port: str | None, baud: int, timeout: float) -> Iterator[Transport]:
    """An open session whose first request was IDENTIFY (t.ident): one round trip less than
    a PING first."""
    t = Transport.open(choose_port(port), baud, timeout)
    try:
        t.ident = dict(t.connect_identify())
        yield t
    finally:
        t.close()


def _identify(t: Transport) -> dict[str, Any]:
    return dict(t.identify())


_HEAD_READ = 96  # bytes of the report log that hold its counters line


def _pending(head: dict[str, Any], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reports not acknowledged yet (an entry without seq, from an older agent, is pending)."""
    acked = head.get("acked", 0)
    return [e for e in entries if not isinstance(e.get("seq"), int) or e["seq"] > acked]


def _short(digest: Any) -> str:
    return printable(digest, 16) if digest else "none"


def _p(value: Any) -> str:
    """Text from the device, safe to print."""
    return printable(value)


# ---- info ----------------------------------------------------------------------------------


@device.command("info")
@_port_options
def info(port: str | None, baud: int, timeout: float, as_json: bool) -> None:
    """Who the device is and what it runs: identity, agent, fleet, bundle, clock, reports."""
    with _session(port, baud, timeout) as t:
        ident = t.ident
        # IDENTIFY counts the pending and kept reports; the log's first line has the counters:
        # one short read, not the whole log
        try:
            _total, first = t.call(t.client.read_reports(0, _HEAD_READ), "READ_REPORTS")
            head, _ = parse_report_log(first.split(b"\n", 1)[0])
        except FleetpinError:
            head = {}
    pending = ident.get("reports")
    kept = ident.get("reports_kept", "?")
    ident["pending_reports"] = pending
    if as_json:
        click.echo(json.dumps(ident, sort_keys=True))
        return
    rows = [
        ("device", _p(ident.get("device_id"))),
        ("agent", f"{_p(ident.get('agent'))} (protocol {_p(ident.get('proto'))})"),
        ("fleet", _p(ident.get("fleet"))),
        ("mode", _p(ident.get("mode"))),
        ("bundle", f"v{_p(ident.get('bundle_version'))}  id {_p(ident.get('bundle_id') or '?')}  "
                   f"sha256 {_p(ident.get('bundle_sha256'))}"
         if ident.get("bundle_version") is not None else "none (safe mode: every pinned connection is refused)"),
        ("signers", _signers_row(ident.get("signers"))),
        ("clock", _p(ident.get("clock"))),
        ("reports", "unknown" if pending is None else f"{_p(pending)} pending, {_p(kept)} kept "
                                                       f"({_p(head.get('total', '?'))} recorded in all)"),
    ]
    for k, v in rows:
        click.echo(f"{k:>8}: {v}")
    for p in ident.get("problems") or []:
        click.echo(f"{'problem':>8}: {_p(p)}")


def _signers_row(trust: Any) -> str:
    if not isinstance(trust, dict) or not isinstance(trust.get("ids"), list):
        return "not reported"
    n = len(trust["ids"])
    vouched = trust.get("vouched")
    by = f"; its highest version was signed by {', '.join(map(str, vouched))}" if isinstance(vouched, list) and vouched else ""
    return _p(f"{', '.join(str(i) for i in trust['ids'])}: {trust.get('threshold')} of {n} sign a bundle, "
              f"{trust.get('rotation_threshold')} of {n} change the signer set{by}")


# ---- update --------------------------------------------------------------------------------


def full_diff(installed: bytes | None, old_label: str, new: Any) -> dict[str, Any]:
    """What `fleetpin bundle diff` reports from the installed bundle (None: safe mode, none) to
    the new bundle's view."""
    old = bundle_view(installed, old_label) if installed is not None else empty_view(old_label)
    return diff_views(old, new, [], int(time.time()))


def _print_diff(d: dict[str, Any]) -> None:
    lines = describe(d)
    if not lines:
        click.echo("  no change to what the device accepts")
    for line in lines:
        mark = "!" if line.security else " "
        # hosts, labels and subjects come from the device's bundle too: shown printable
        text = f"{mark} {'    ' * line.indent}{printable(line.text, 400)}"
        click.secho(text, fg="yellow" if line.security else None, bold=line.security)
    if any(line.security for line in lines):
        click.echo("  (! = changes what the device trusts: read these lines before you say yes)")


def _load_bundle(path: Path) -> tuple[bytes, Any]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}", hint="pass a bundle built by fleetpin bundle build") from None
    try:
        decoded = dev_bundle.decode_unverified(data)
    except dev_bundle.BundleError as e:
        raise UsageError(f"{path}: not a valid bundle: {e.reason}", hint="rebuild it with fleetpin bundle build") from None
    remember(data)  # the next update of a device that runs it needs no read-back
    return data, decoded


class _Refused(FleetpinError):
    """Refused by fleetpin itself before anything was sent."""


def _progress(enabled: bool) -> Any:
    return Progress(
        TextColumn("sending"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True, disable=not enabled,
    )


@device.command("update")
@click.argument("bundle_file", metavar="BUNDLE", type=click.Path(dir_okay=False, path_type=Path))
@_port_options
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation (for scripts)")
@click.option("--receipt", type=click.Path(dir_okay=False, path_type=Path),
              help="where to write the JSON receipt (default: ./receipt-DEVICE-TIME.json)")
def update(bundle_file: Path, port: str | None, baud: int, timeout: float, as_json: bool, yes: bool,
           receipt: Path | None) -> None:
    """Install a signed pin bundle on the device, with a receipt.

    Shows everything the bundle changes (as `fleetpin bundle diff` does, in plain words; lines
    that change what the device trusts are marked !), refuses a bundle for another fleet or not
    newer than the installed one before sending anything, asks (unless --yes), transfers,
    commits and checks the digest the device reports. Interrupted (a pulled cable, Ctrl-C)? The
    old bundle stays in force and the receipt says where the board was left; run the same
    command again: it resumes from the last byte the device acknowledged.
    """
    data, new = _load_bundle(bundle_file)
    new_sha = hashlib.sha256(data).hexdigest()
    if receipt is not None:
        check_writable(receipt)  # the default place (the current directory) is checked the same way
    else:
        check_writable(Path("receipt.json"))
    port = choose_port(port)
    try:
        new_view = bundle_view(data, str(bundle_file))  # worked out before the line is busy
    except ValueError as e:  # a CA certificate X.509 cannot parse (the agent would refuse it too)
        raise UsageError(f"{bundle_file}: a CA certificate in the bundle does not parse: {e}",
                         hint="rebuild it with fleetpin bundle build") from None
    rec = Receipt(port=port, bundle_file=str(bundle_file))
    rec.new = {"version": new.version, "sha256": new_sha, "id": new.digest.hex()}
    t0 = time.monotonic()
    outcome: dict[str, Any] = {}
    transport: Transport | None = None
    stage = _Stage()
    failing = True
    try:
        transport = Transport.open(port, baud, timeout)
        outcome = _update(transport, data, new, new_sha, rec, as_json, yes, stage, new_view)
        failing = False
    except click.exceptions.Abort:  # Ctrl-C or end of input at the prompt
        rec.result, rec.error = "aborted", "interrupted at the confirmation prompt"
        rec.board_state = stage.board_state(rec, transport)
        raise
    except KeyboardInterrupt:
        rec.result = "interrupted"
        rec.error = f"interrupted (Ctrl-C) while {stage.doing}"
        rec.board_state = stage.board_state(rec, transport)
        raise FleetpinError(f"update {rec.error}: {rec.board_state}",
                            hint="run the same command again: it resumes where the transfer stopped") from None
    except FleetpinError as e:
        if rec.result != "aborted":
            refused = isinstance(e, _Refused) or is_refusal(getattr(e, "code_name", None))
            rec.result = "refused" if refused else "failed"
        rec.error, rec.hint = str(e), e.hint
        rec.board_state = stage.board_state(rec, transport)
        if rec.result == "failed" and rec.old.get("version") is not None:
            e.hint = (e.hint or "run the command again") + (
                f"; the device keeps bundle v{rec.old['version']} unless the commit went through "
                "(a second run says 'already installed' if it did)"
            )
        raise
    finally:
        if transport is not None:
            rec.transfer = transport.stats
            transport.close()
        rec.finished = utc_now()
        rec.duration_s = round(time.monotonic() - t0, 3)
        try:
            path = write_receipt(receipt or default_path(rec.device_id, rec.started), rec)
        except UsageError as e:
            if not failing:
                raise
            click.echo(f"warning: {e}", err=True)  # the failure being reported matters more
        else:
            if not as_json or rec.result not in ("installed", "already-installed"):
                click.echo(f"receipt: {path}", err=True)
            outcome["receipt"] = str(path)
    if as_json:
        click.echo(json.dumps({"result": rec.result, "device_id": rec.device_id, "old": rec.old, "new": rec.new,
                               "diff": outcome.get("diff"), "receipt": str(path), "transfer": rec.transfer}, sort_keys=True))


class _Stage:
    """Where an update is, to say in the receipt what state an interruption left the board in."""

    def __init__(self) -> None:
        self.doing = "opening the port"
        self.sent = False  # a byte of the bundle went out
        self.committing = False
        self.total = 0

    def board_state(self, rec: Receipt, t: Transport | None) -> str:
        old = rec.old.get("version")
        keeps = f"the device keeps bundle v{old}" if old is not None else "the device keeps no bundle (safe state)"
        if rec.result in ("installed", "already-installed"):
            return f"bundle v{rec.new.get('version')} installed"
        if self.committing:
            return (f"unknown: the commit of v{rec.new.get('version')} was sent; the device runs v{old} or "
                    f"v{rec.new.get('version')} (fleetpin device info tells)")
        if not self.sent:
            return f"unchanged: {keeps} (nothing of the new bundle sent)"
        up = t.last_upload if t is not None else None
        acked = up.acked if up is not None else 0
        return (f"unchanged: {keeps}; it holds {acked} of {self.total} bytes of v{rec.new.get('version')}, "
                "kept for a resume until another upload begins (in flash once the session ends, "
                "30 s after the last frame; a reset before that loses them)")


def _update(t: Transport, data: bytes, new: Any, new_sha: str, rec: Receipt, as_json: bool, yes: bool,
            stage: _Stage, new_view: Any) -> dict[str, Any]:
    stage.doing = "starting the session"
    ident = dict(t.connect_identify())
    rec.device_id = ident.get("device_id")
    rec.fleet = ident.get("fleet")
    rec.old = {"version": ident.get("bundle_version"), "sha256": ident.get("bundle_sha256"), "id": ident.get("bundle_id")}
    old_version = ident.get("bundle_version")
    old_sha = ident.get("bundle_sha256")
    if new.fleet != ident.get("fleet"):
        raise _Refused(
            f"the bundle is for fleet {new.fleet!r}, the device {_p(rec.device_id)} is in fleet "
            f"{_p(repr(ident.get('fleet')))} (nothing sent)",
            hint="build the bundle for the device's fleet, or check you have the right device",
        )
    # A bundle is its signed bytes (pinagent.bundle): another encoding of the installed bundle
    # (a signature's s or n - s) is installed already. Agents before bundle ids: the file digest.
    if ("bundle_id" in ident and ident["bundle_id"] == rec.new["id"]) or old_sha == new_sha:
        rec.result = "already-installed"
        if not as_json:
            click.echo(f"{_p(rec.device_id)}: bundle v{new.version} ({_short(new_sha)}) is already installed; nothing to do")
        return {"diff": []}
    reset_line = None
    if isinstance(old_version, int) and new.version <= old_version:
        word = "the same version as" if new.version == old_version else "older than"
        # The reset after a stolen key (pinagent.store): a signer-set change that retires a key
        # which signed the highest version installed. Agents that can do it say who did ("vouched").
        retired = _retired_keys(ident, new)
        vouched = (ident.get("signers") or {}).get("vouched")
        if not retired or not isinstance(vouched, list):
            raise _Refused(
                f"bundle v{new.version} is {word} the installed v{old_version} on {_p(rec.device_id)} (nothing sent)",
                hint="devices never go back: build the bundle with a version above " + str(old_version),
            )
        if not set(retired) & set(vouched):
            raise _Refused(
                f"bundle v{new.version} is {word} the installed v{old_version} on {_p(rec.device_id)}, and the keys its "
                f"new signer set retires ({', '.join(retired)}) did not sign that version "
                f"({'signed by ' + ', '.join(map(str, vouched)) if vouched else 'the device does not know who signed it'}) "
                "(nothing sent)",
                hint="retire the key that signed the installed version (fleetpin device info shows it), "
                     f"or build the bundle with a version above {old_version}",
            )
        reset_line = (f"  v{new.version} is {word} the installed v{old_version}: a signer-set change that retires "
                      f"{', '.join(sorted(set(retired) & set(vouched)))}, which signed v{old_version}: the device "
                      "resets its version record (the reset after a stolen key)")
    signed_line = _check_signers(ident, new)
    installed = None
    if old_version is not None:
        installed = lookup(old_sha)  # a bundle this host built, verified or read: no read-back
        if installed is None:
            stage.doing = "reading the installed bundle back"
            installed = t.read_all("bundle")
            if hashlib.sha256(installed).hexdigest() != old_sha:
                raise FleetpinError("the installed bundle read back does not match the digest the device reports",
                                    hint="retry; if it persists the device's flash may be failing")
            remember(installed)
    up = None
    if yes:
        # nothing to ask: the transfer starts now and the diff is worked out while it runs
        stage.doing, stage.sent, stage.total = "sending the bundle", True, len(data)
        up = t.start_upload(data)
    try:
        d = full_diff(installed, f"installed v{old_version}", new_view)
    except (UsageError, ValueError) as e:  # an installed bundle this host cannot read: say so, do not guess
        raise FleetpinError(f"the installed bundle the device sent does not parse ({printable(e)})"
                            + ("" if yes else ": nothing sent"),
                            hint="the device's flash or agent may be damaged: check it with fleetpin device info; "
                                 "re-flash it on the production line if it persists") from None
    if not as_json:
        click.echo(f"device {_p(rec.device_id)} (fleet {_p(rec.fleet)}): bundle "
                   f"{'v' + str(old_version) if old_version is not None else 'none (safe mode)'} -> v{new.version}")
        _print_diff(d)
        if signed_line:
            click.echo(signed_line)
        if reset_line:
            click.secho(reset_line, fg="yellow")
    if not yes:
        stage.doing = "asking for confirmation"
        if not click.confirm(f"Install bundle v{new.version} on {_p(rec.device_id)}?", default=False, err=True):
            rec.result = "aborted"
            raise FleetpinError("not installed: you declined", hint="run again and answer y, or pass --yes")
    stage.doing, stage.sent, stage.total = "sending the bundle", True, len(data)
    with _progress(not as_json) as bar:
        task = bar.add_task("send", total=len(data))

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done)
            up = t.last_upload
            if up is not None and up._commit is not None and not stage.committing:
                stage.doing, stage.committing = "committing", True

        result = t.upload(data, progress, up)
    stage.committing = False
    got = result.get("bundle_sha256")
    if got is None:  # an agent whose commit answer carries no digest: ask
        after = _identify(t)
        got = after.get("bundle_sha256")
        result = {**result, "version": after.get("bundle_version"), "bundle_id": after.get("bundle_id")}
    rec.new = {"version": result.get("version"), "sha256": got, "id": result.get("bundle_id")}
    if got != new_sha:
        raise FleetpinError(
            f"the device answered the commit ({_p(result)}) but reports bundle {_short(got)}, not {_short(new_sha)}",
            hint="run fleetpin device info; then run the update again",
        )
    rec.result = "installed"
    up = t.last_upload
    resumed = up.resumed if up is not None else 0
    if not as_json:
        click.secho(f"installed: {_p(rec.device_id)} now runs bundle v{_p(result.get('version'))} ({_short(new_sha)}), "
                    "digest checked" + (f" (resumed: {resumed} bytes were already on the device)" if resumed else ""),
                    fg="green")
    return {"diff": d}


def _retired_keys(ident: dict[str, Any], new: Any) -> list[str]:
    """The ids of keys the device trusts (its IDENTIFY "signers") that the bundle's new signer set
    leaves out; [] for a bundle without one, or an agent that does not say."""
    trust = ident.get("signers")
    if new.signers is None or not isinstance(trust, dict) or not isinstance(trust.get("ids"), list):
        return []
    kept = {s.key_id.hex() for s in new.signers.signers}
    return [k for k in trust["ids"] if isinstance(k, str) and k not in kept]


def _check_signers(ident: dict[str, Any], new: Any) -> str | None:
    """The confirmation's line on who signed and what the device needs (its IDENTIFY "signers":
    trusted key ids and thresholds); _Refused before anything is sent if too few of the device's
    keys signed. None for agents that do not say (they check it themselves)."""
    trust = ident.get("signers")
    if not isinstance(trust, dict) or not isinstance(trust.get("ids"), list):
        return None
    ids = [k.hex() for k in new.key_ids]
    signed = [k for k in ids if k in trust["ids"]]
    rotation = new.signers is not None
    why = "a signer-set change" if rotation else "a bundle"
    needed = trust.get("rotation_threshold" if rotation else "threshold", 2 if rotation else 1)
    if not signed:
        raise _Refused(f"not signed by a key the device trusts ({why} needs {needed} of its keys) (nothing sent)",
                       hint="sign it with a key of the device's signer set (fleetpin device info shows its key ids)")
    if len(signed) < needed:
        raise _Refused(
            f"{why} needs {needed} of the device's keys, signed by {len(signed)} ({', '.join(signed)}) (nothing sent)",
            hint="sign it with more keys of the device's signer set (fleetpin bundle verify --trust shows who signed)")
    return (f"  signed by {', '.join(signed)}: {len(signed)} of the device's {len(trust['ids'])} keys; "
            f"{why} needs {needed}")


# ---- reports, test-connect, reboot ---------------------------------------------------------


@device.command("reports")
@_port_options
@click.option("--ack", is_flag=True,
              help="acknowledge the reports read: they stay on the device (nothing erases them over the cable) "
                   "but are no longer pending, and newer reports overwrite them first")
@click.option("--store", is_flag=True, help="record them in the registry (per device, deduplicated), before any --ack")
@click.option("--registry", "registry_url", envvar=ENV_VAR, default=None, metavar="URL", help="with --store: " + URL_HELP)
def reports(port: str | None, baud: int, timeout: float, as_json: bool, ack: bool, store: bool,
            registry_url: str | None) -> None:
    """The device's pin-failure reports (HPKP/TrustKit fields), least recently seen first.

    Reports are never erased over serial (anyone with a cable could wipe an attack's traces):
    --ack marks those read as seen. --store records them in the registry the line and the fleet
    share (`fleetpin fleet status` shows them; a report read twice counts once), before any
    --ack. --json prints a document `fleetpin fleet import` takes later: the reports, the
    ring's counters, and the device (IDENTIFY)."""
    reg = None
    if store:
        from fleetpin.field.fleet import store_reports
        from fleetpin.line.registry import Registry, display_url

        reg = Registry(registry_url)  # a bad URL or schema stops here, before the device is touched
    try:
        with _session(port, baud, timeout) as t:
            ident = t.ident
            read_at = utc_now()
            head, entries = parse_report_log(t.read_all("reports"))
            pending = _pending(head, entries)
            stored = None
            if reg is not None:  # before --ack: reports that could not be stored stay pending
                stored = store_reports(reg, {"device": _device_fields(ident), "counters": head, "reports": entries},
                                       seen_at=report_time(read_at))
            acked = None
            if ack and isinstance(head.get("total"), int):
                acked = t.call(t.client.ack_reports(head["total"]), "ACK_REPORTS")
    finally:
        if reg is not None:
            reg.close()
    if as_json:
        doc = {"device": _device_fields(ident), "read_at": read_at, "counters": head, "reports": entries,
               "pending": len(pending), "acked": acked}
        if stored is not None:
            doc["stored"] = {"added": stored.added, "merged": stored.merged}
        click.echo(json.dumps(doc, sort_keys=True))
        return
    if not pending:
        click.echo(f"no pending reports ({len(entries)} kept, {_p(head.get('total', 0))} recorded in all, "
                   f"{_p(head.get('dropped', 0))} dropped)")
    for r in entries:
        mark = "" if r in pending else "  [acknowledged]"
        click.echo(f"{_p(r.get('date-time'))}  {_p(r.get('hostname'))}:{_p(r.get('port'))}  x{_p(r.get('count', 1))}  "
                   f"{_p(r.get('validation-result'))}  (last {_p(r.get('last-seen'))}){mark}")
    if stored is not None and reg is not None:
        click.echo(f"stored for {_p(stored.device_id)} in {display_url(reg.url)}: {stored.added} new, {stored.merged} already there")
    if acked is not None:
        click.echo(f"acknowledged {len(pending)} report(s); they stay on the device until newer ones overwrite them")


def _device_fields(ident: dict[str, Any]) -> dict[str, Any]:
    """What the registry keeps of a device's IDENTIFY answer."""
    return {k: ident.get(k) for k in ("device_id", "mac", "fleet", "bundle_version", "bundle_sha256")}


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, 443
    try:
        n = int(port)
    except ValueError:
        raise UsageError(f"bad port in {text!r}", hint="HOST or HOST:PORT, e.g. api.example.com:443") from None
    if not 0 < n < 65536 or not host:
        raise UsageError(f"bad address {text!r}", hint="HOST or HOST:PORT, port 1-65535")
    return host, n


@device.command("test-connect")
@click.argument("address", metavar="HOST[:PORT]")
@_port_options
def test_connect(address: str, port: str | None, baud: int, timeout: float, as_json: bool) -> None:
    """Ask the device itself to open a pinned TLS connection: its own verdict, from its network.

    Only hosts the installed bundle has a rule for (the cable is no way to make the device probe
    other hosts): any other is refused with the error `connect`, before the device connects."""
    host, tcp_port = _host_port(address)
    with _session(port, baud, timeout) as t:
        verdict = check_verdict(t.call(t.client.test_connect(host, tcp_port), "TEST_CONNECT"))
    if as_json:
        click.echo(json.dumps(verdict, sort_keys=True))
    else:
        _print_verdict(host, tcp_port, verdict)
    if not verdict.get("allowed", verdict.get("ok", False)):
        raise FleetpinError(f"the device refused {host}:{tcp_port}: {_p(verdict.get('reason', 'see the verdict'))}",
                            hint="check the pins for this host (fleetpin pin HOST) against the bundle")


def _print_verdict(host: str, tcp_port: int, v: dict[str, Any]) -> None:
    """One line for the verdict, then the chain the device saw, depth by depth."""
    ok = bool(v.get("allowed"))
    why = _p(v.get("reason"))
    if v.get("matched_label") is not None:
        why += f": pin \"{_p(v['matched_label'])}\" at depth {v.get('matched_depth')}"
    if v.get("rule"):
        why += f" (rule {_p(v['rule'])})"
    if not v.get("clock_trusted", True):
        why += ", clock untrusted"
    click.secho(f"{host}:{tcp_port}: {'ALLOWED' if ok else 'REFUSED'} {why}", fg="green" if ok else "red")
    for c in v.get("chain") or []:
        click.echo(f"  depth {c.get('depth')}  {_p(c.get('pin'))}")
    if v.get("detail"):
        click.echo(f"  detail: {_p(v['detail'])}")


@device.command("reboot")
@_port_options
def reboot(port: str | None, baud: int, timeout: float, as_json: bool) -> None:
    """Reboot the device and wait until its agent answers again."""
    with _session(port, baud, timeout) as t:
        before = t.client.restarted
        t.call(t.client.reboot(), "REBOOT")
        # the rebooted agent announces itself; the link then starts a new session
        deadline = time.monotonic() + timeout
        t.pump(lambda: t.client.restarted > before or time.monotonic() > deadline)
        if t.client.restarted == before:
            raise FleetpinError(f"the device agreed to reboot but did not announce itself within {timeout:g} s",
                                hint="check the console output; then run fleetpin device info")
        ident = _identify(t)
    if as_json:
        click.echo(json.dumps({"rebooted": True, "device": ident}, sort_keys=True))
    else:
        click.echo(f"rebooted: {_p(ident.get('device_id'))} is back, mode {_p(ident.get('mode'))}, "
                   f"bundle v{ident.get('bundle_version')}")
