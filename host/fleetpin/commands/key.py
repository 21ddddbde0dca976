"""`fleetpin key`: signing keys, backup TLS keys and the signer set devices trust."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fleetpin import passphrase
from fleetpin.bundles.build import canonical_json
from fleetpin.errors import UsageError
from fleetpin.files import write_atomic
from fleetpin.pki import keys
from fleetpin.pki.certs import read_input

_PASSPHRASE_HELP = passphrase.OPTION_HELP


@click.group()
def key() -> None:
    """Bundle signing keys, backup TLS keys, and the signer set devices trust.

    \b
    Typical setup, once per channel:
      fleetpin key new --signing --id everyday -o keys/
      fleetpin key new --signing --id backup -o offline/      (store offline)
      fleetpin key signers keys/everyday.pub.json offline/backup.pub.json -o signers.json
    """


@key.command("new")
@click.option("--signing", "kind", flag_value="signing", help="a bundle signing key (ECDSA P-256)")
@click.option("--backup-pin", "kind", flag_value="backup-pin", help="a backup TLS key pair: prints the pin for the policy")
@click.option("--id", "name", help="key name: file names and the signer set use it (signing: required)")
@click.option("--role", type=click.Choice(keys.ROLES), default="production", show_default=True,
              help="production keys sign production bundles only; development keys development bundles only")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="directory to write the key files to (never overwrites)")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), help=_PASSPHRASE_HELP)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def new(kind: str | None, name: str | None, role: str, out_dir: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Generate a signing key (--signing) or a backup TLS key pair (--backup-pin).

    \b
    --signing writes NAME.key.pem (P-256 private key, encrypted with the passphrase) and
    NAME.pub.json (key id, role, public key: public, put it in the signer set). The key id is
    the first 8 bytes of SHA-256 of the SubjectPublicKeyInfo, in hex.
    --backup-pin writes NAME.key.pem (encrypted) and NAME.pub.pem, and prints the pin to add to
    the policy (label it "backup"). Take the private key offline: it is what a server
    switches to if its current key is lost or compromised.
    """
    if kind is None:
        raise UsageError("say which key: --signing or --backup-pin", hint="fleetpin key new --help")
    if kind == "signing":
        if not name:
            raise UsageError("--id is required for a signing key", hint="e.g. --id everyday-2025")
        info, key_path, pub_path = keys.new_signing_key(name, role, out_dir, keys.read_passphrase(passphrase_file, confirm=True))
        if as_json:
            click.echo(json.dumps({**info.to_obj(), "private_key": str(key_path), "public_info": str(pub_path)}))
        else:
            click.echo(f"signing key {info.name}: id {info.key_id}, role {info.role}")
            click.echo(f"  private: {key_path}  (encrypted; keep it safe)")
            click.echo(f"  public:  {pub_path}  (add it to the signer set: fleetpin key signers)")
        return
    pin, key_path, pub_path = keys.new_backup_tls_key(name or "backup-tls", out_dir, keys.read_passphrase(passphrase_file, confirm=True))
    if as_json:
        click.echo(json.dumps({"pin": "sha256/" + pin, "private_key": str(key_path), "public_key": str(pub_path)}))
    else:
        click.echo(f"sha256/{pin}")
        click.echo(f"  add to the policy: {{ pin = \"sha256/{pin}\", label = \"backup\" }}", err=True)
        click.echo(f"  private key {key_path}: take it offline now", err=True)


@key.command("reencrypt")
@click.argument("key_file", metavar="KEY.key.pem", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), help=_PASSPHRASE_HELP)
@click.option("--new-passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help="file holding a new passphrase (default: keep the current one)")
def reencrypt(key_file: Path, passphrase_file: Path | None, new_passphrase_file: Path | None) -> None:
    """Rewrite an encrypted private key with today's key derivation (scrypt N=2^14, r=8, p=5).

    Keys made by older fleetpin versions (PBKDF2 at 2,048 iterations) still work everywhere;
    this makes a stolen copy of the file far costlier to attack. The key itself (and so its
    key id, pin and signatures) does not change. Old copies of the file (backups) keep the
    old protection: replace them too.
    """
    passphrase = keys.read_passphrase(passphrase_file, confirm=False)
    new_passphrase = keys.read_passphrase(new_passphrase_file, confirm=True, prompt="new key passphrase") \
        if new_passphrase_file is not None else None
    p = keys.reencrypt_private_key(key_file, passphrase, new_passphrase)
    click.echo(f"{key_file}: re-encrypted (scrypt N={p['n']}, r={p['r']}, p={p['p']}; AES-256-CBC)")


@key.command("import")
@click.argument("public_key", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--id", "name", required=True, help="key name")
@click.option("--role", type=click.Choice(keys.ROLES), required=True)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def import_(public_key: Path, name: str, role: str, out_dir: Path, as_json: bool) -> None:
    """Write NAME.pub.json for a key held in an HSM or KMS, from its public key (PEM or DER).

    Then sign with: fleetpin bundle build ... --key NAME.pub.json --sign-command CMD
    """
    info, path = keys.import_public_key(read_input(public_key), name, role, out_dir)
    if as_json:
        click.echo(json.dumps({**info.to_obj(), "public_info": str(path)}))
        return
    click.echo(f"key {info.name}: id {info.key_id}, role {info.role} -> {path}")


@key.command("signers")
@click.argument("public_infos", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="signer set file (JSON) to flash into devices / pass to bundle build --new-signers")
@click.option("--threshold", type=int, default=1, show_default=True,
              help="signatures of these keys an ordinary bundle needs")
@click.option("--rotation-threshold", type=int,
              help="signatures of these keys a bundle that changes the signer set needs (default: 2, or "
                   "--threshold if higher; never fewer than 2)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def signers(public_infos: tuple[Path, ...], out_file: Path, threshold: int, rotation_threshold: int | None,
            as_json: bool) -> None:
    """Write the signer set devices trust from NAME.pub.json files (at least two keys).

    All keys must have one role: a production device trusts production keys only. The set says
    how many of its keys must sign: --threshold for an ordinary bundle (default 1: the everyday
    key), --rotation-threshold for a bundle that changes the set (default 2: the everyday key
    AND the offline backup, so one stolen key can never replace the set).
    """
    if rotation_threshold is None:
        rotation_threshold = max(2, threshold)
    infos = [keys.load_public_info(p) for p in public_infos]
    obj = keys.signer_set_obj(infos, threshold, rotation_threshold)
    write_atomic(out_file, canonical_json(obj))
    if as_json:
        click.echo(json.dumps({"file": str(out_file), "channel": obj["channel"], "threshold": threshold,
                               "rotation_threshold": rotation_threshold,
                               "signers": [{"id": i.key_id, "name": i.name} for i in infos]}))
        return
    click.echo(f"{obj['channel']} signer set, {len(infos)} keys -> {out_file}")
    click.echo("  " + keys.threshold_text(threshold, rotation_threshold, len(infos)))
    for i in infos:
        click.echo(f"  {i.key_id}  {i.name}")
