"""`fleetpin image build|verify`: the firmware and filesystem a production line flashes."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fleetpin.errors import UsageError
from fleetpin.line.boards import MIB, default_boards_dir, flash_size_label, get_board, parse_flash_size
from fleetpin.line.image import build_image, bundle_identity, verify_image
from fleetpin.line.registry_url import ENV_VAR, URL_HELP

_file = click.Path(exists=True, dir_okay=False, path_type=Path)
_boards_dir = click.option(
    "--boards-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of board TOML files (default: $FLEETPIN_BOARDS or the repo's boards/).",
)


@click.group()
def image() -> None:
    """Build and verify production images (firmware + LittleFS filesystem + manifest)."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}", hint="check the path") from None


@image.command()
@click.option("--board", required=True, help="Board name (see fleetpin boards).")
@click.option("--firmware", required=True, type=_file, help="MicroPython's combined firmware.bin for the board.")
@click.option("--bundle", required=True, type=_file, help="The signed pin bundle to install.")
@click.option("--signers", required=True, type=_file, help="The signer set file the devices trust (factory anchor).")
@click.option("--flash-size", default=None, help="Flash size of the boards, e.g. 4MB (default: the board's smallest).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--device-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="An agent's device/ folder with its manifest.py (default: the agent that ships with fleetpin).")
@click.option("--app", "app", type=click.Path(exists=True, path_type=Path), metavar="FILE_OR_DIR",
              help="Your application: a .py file (installed as the `app` module) or a folder of modules with "
                   "app.py; main.py runs app.main(agent) after the agent boots.")
@click.option("--registry", "registry_url", envvar=ENV_VAR, default=None, metavar="URL",
              help="Registry to check the bundle against (a SQLite file only if it exists). " + URL_HELP)
@click.option("--allow-older-bundle", is_flag=True,
              help="Build even if the registry has seen a newer bundle for the fleet (a deliberate downgrade).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@_boards_dir
def build(
    board: str,
    firmware: Path,
    bundle: Path,
    signers: Path,
    flash_size: str | None,
    out_dir: Path,
    device_dir: Path | None,
    app: Path | None,
    registry_url: str | None,
    allow_older_bundle: bool,
    as_json: bool,
    boards_dir: Path | None,
) -> None:
    """Compile the agent (and --app, your application) to .mpy and put them, main.py, the
    bundle, the signer set and the device configuration into a LittleFS image placed where this
    firmware mounts its filesystem.

    \b
    The filesystem's start is read from the firmware's own partition table; a firmware for
    another chip, an app that does not fit, or a table that does not fit the flash size is
    refused. Writes OUT/firmware.bin, OUT/fs.bin and OUT/manifest.json.

    \b
    The application: main.py boots the agent, serves field updates on the console for 3 s,
    then imports `app` and calls app.main(agent); open every TLS connection with
    agent.connect(host, port) (pinned, CA-validated). --app app.py installs one file as
    /lib/app.mpy; --app DIR installs every module of DIR under /lib (it must hold app.py
    or an app/ package). Both are compiled with mpy-cross, as the agent is.

    \b
    A bundle older than the newest one the registry has seen for its fleet (boards were
    provisioned with it) is refused unless --allow-older-bundle: a board imaged with it would
    accept every bundle since, retired ones included.
    """
    b = get_board(board, boards_dir or default_boards_dir())
    size = parse_flash_size(flash_size) if flash_size else b.flash_sizes[0] * MIB
    bundle_data = _read(bundle)
    if not allow_older_bundle:
        from fleetpin.line.registry import Registry, missing_file, refuse_older_bundle

        if not missing_file(registry_url):  # no registry yet: nothing seen
            fleet, version = bundle_identity(bundle_data)
            with Registry(registry_url, create=False) as reg:
                refuse_older_bundle(reg, fleet, version, str(bundle))
    m = build_image(b, _read(firmware), bundle_data, _read(signers), size, out_dir, device_dir, app)
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    click.echo(f"image {m['image_id']}  board {b.name}  flash {flash_size_label(size)}  fleet {m['content']['fleet']}")
    for r in m["regions"]:
        click.echo(f"  {r['file']:<13} at 0x{r['offset']:06x}  {r['size']:>8} bytes  sha256 {r['sha256'][:16]}")
    if m["content"].get("app"):
        click.echo(f"  application: {', '.join(m['content']['app'])}")
    click.echo(f"  {len(m['content']['files'])} files in the filesystem; written to {out_dir}")


@image.command()
@click.argument("image_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@_boards_dir
def verify(image_dir: Path, as_json: bool, boards_dir: Path | None) -> None:
    """Check an image directory: hashes, firmware against the board, filesystem remounted."""
    img = verify_image(image_dir, boards_dir)
    if as_json:
        click.echo(json.dumps({"ok": True, "image_id": img.image_id, "board": img.board.name, "regions": img.regions}, indent=2))
    else:
        click.echo(f"ok: image {img.image_id} for {img.board.name}: regions match, filesystem mounts, files match")
