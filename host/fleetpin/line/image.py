"""Production images: a MicroPython firmware.bin and a LittleFS filesystem holding the agent,
its bundle and signer set, laid out where that firmware will mount it, plus a manifest of
every region's offset, size and SHA-256.

The filesystem's place is read from the firmware itself: MicroPython >= 1.26 creates the `vfs`
partition at boot from the end of the last partition in its partition table to the end of
flash, so the table (ESP-IDF binary format, at flash 0x8000) decides where LittleFS starts and
the flash size decides how many blocks it has. A LittleFS whose block count differs from the
partition's does not mount, and a board whose filesystem does not mount while block 0 is not
blank never runs main.py; so every check that guards against that happens before an image is
written, and `verify_image` repeats them on the output.

    layout = check_firmware(fw, board, flash_size)
    manifest = build_image(board, fw, bundle, signers, flash_size, out_dir, device_dir)
    report = verify_image(out_dir)
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import littlefs

from fleetpin.agent_files import app_files, board_files
from fleetpin.bundles.build import canonical_json
from fleetpin.errors import FleetpinError, UsageError
from fleetpin.line.boards import MIB, Board, flash_size_label, get_board
from pinagent import bundle as _bundle
from pinagent import signers as _signers
from pinagent import store as _store

MANIFEST_FORMAT = 1
PART_ENTRY = 32
PART_MAGIC = 0x50AA
PART_MD5_MAGIC = 0xEBEB
PART_TABLE_MAX = 0xC00
IMAGE_MAGIC = 0xE9
CHIP_ID_OFFSET = 12  # u16 in the extended header of every ESP-IDF image
APP_TYPE = 0x00
MIN_FS_BLOCKS = 8  # room for the superblock pair, directories and the agent's files
# ESP-IDF image header flash size nibble, as esptool's parse_flash_size_arg writes it
FLASH_SIZE_CODES = {1: 0x00, 2: 0x10, 4: 0x20, 8: 0x30, 16: 0x40, 32: 0x50, 64: 0x60, 128: 0x70}

FS_BUNDLE = "/fleetpin/bundle.bin"
FS_SIGNERS = "/fleetpin/signers.bin"
FS_CONFIG = "/fleetpin/config.json"
FS_MAIN = "/main.py"


class FirmwareError(FleetpinError):
    """The firmware file cannot be provisioned on this board at this flash size."""


class ImageError(FleetpinError):
    """An image directory is incomplete, altered, or would not mount."""


@dataclass(frozen=True)
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class FsGeometry:
    offset: int
    size: int
    block_size: int
    read_size: int
    prog_size: int
    lookahead_size: int
    block_cycles: int

    @property
    def block_count(self) -> int:
        return self.size // self.block_size

    @staticmethod
    def for_board(board: Board, offset: int, size: int) -> FsGeometry:
        return FsGeometry(
            offset,
            size,
            board.fs_block_size,
            board.fs_read_size,
            board.fs_prog_size,
            board.fs_lookahead_size,
            board.fs_block_cycles,
        )

    def lfs_config(self) -> dict[str, Any]:
        return dict(
            block_size=self.block_size,
            read_size=self.read_size,
            prog_size=self.prog_size,
            lookahead_size=self.lookahead_size,
            block_cycles=self.block_cycles,
        )


@dataclass(frozen=True)
class FirmwareLayout:
    partitions: list[Partition]
    app: Partition
    fs: FsGeometry
    flash_size: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- firmware ------------------------------------------------------------------------------


def read_partition_table(fw: bytes, board: Board) -> list[Partition]:
    """The ESP-IDF binary partition table inside a combined firmware file: 32-byte entries
    (magic 0x50AA) at flash partition_table_offset, closed by an MD5 entry (0xEBEB) whose
    digest covers the entries before it."""
    start = board.partition_table_offset - board.firmware_offset
    if start < 0 or len(fw) < start + PART_ENTRY:
        raise FirmwareError(
            f"firmware is {len(fw)} bytes: too short to hold a partition table at flash 0x{board.partition_table_offset:x}",
            hint="pass MicroPython's combined firmware.bin for this board, not the app alone",
        )
    parts: list[Partition] = []
    pos = start
    while pos + PART_ENTRY <= min(len(fw), start + PART_TABLE_MAX):
        entry = fw[pos : pos + PART_ENTRY]
        magic = struct.unpack_from("<H", entry)[0]
        if magic == PART_MD5_MAGIC:
            if hashlib.md5(fw[start:pos]).digest() != entry[16:32]:
                raise FirmwareError("the firmware's partition table fails its MD5 check", hint="the file is corrupted; download it again")
            break
        if magic != PART_MAGIC:
            break
        ptype, subtype, offset, size, label = struct.unpack_from("<BBII16s", entry, 2)
        parts.append(Partition(label.split(b"\0", 1)[0].decode("ascii", "replace"), ptype, subtype, offset, size))
        pos += PART_ENTRY
    if not parts:
        raise FirmwareError(
            f"no partition table at flash 0x{board.partition_table_offset:x} in the firmware",
            hint=f"is this a combined firmware.bin for {board.name} (written at 0x{board.firmware_offset:x})?",
        )
    return parts


def _image_chip(fw: bytes, file_offset: int, what: str) -> int:
    if len(fw) < file_offset + 24 or fw[file_offset] != IMAGE_MAGIC:
        raise FirmwareError(f"no ESP-IDF image header for the {what} at file offset 0x{file_offset:x}", hint="pass MicroPython's combined firmware.bin for this board")
    return int(struct.unpack_from("<H", fw, file_offset + CHIP_ID_OFFSET)[0])


def fs_bounds(parts: list[Partition], flash_size: int) -> tuple[int, int]:
    """(start, end) of the filesystem MicroPython mounts: the table's vfs partition if it
    declares one (before 1.26), else from the end of the last partition to the end of flash
    (1.26 and later create it at boot)."""
    vfs = [p for p in parts if p.label == "vfs"]
    if vfs:
        return vfs[0].offset, vfs[0].end
    return max(p.end for p in parts), flash_size


def check_firmware(fw: bytes, board: Board, flash_size: int) -> FirmwareLayout:
    """Refuses a firmware for another chip, one whose app does not fit its partition, or whose
    partition table does not fit this flash size; returns where the filesystem goes."""
    if flash_size // MIB not in board.flash_sizes or flash_size % MIB:
        raise UsageError(
            f"{board.name} does not come with {flash_size_label(flash_size)} of flash",
            hint=f"use one of: {', '.join(f'{s}MB' for s in board.flash_sizes)}",
        )
    chip = _image_chip(fw, 0, "bootloader")  # the combined image starts with the bootloader
    if chip != board.chip_id:
        raise FirmwareError(f"the firmware's bootloader is built for chip id {chip}, {board.name} is a {board.chip} (chip id {board.chip_id})", hint="download the firmware built for this board")
    parts = read_partition_table(fw, board)
    apps = [p for p in parts if p.type == APP_TYPE]
    if not apps:
        raise FirmwareError("the firmware's partition table has no app partition", hint="pass a MicroPython firmware.bin")
    app = min(apps, key=lambda p: p.offset)  # factory (or ota_0): what the combined image fills
    app_file = app.offset - board.firmware_offset
    chip = _image_chip(fw, app_file, "app")
    if chip != board.chip_id:
        raise FirmwareError(f"the firmware's app is built for chip id {chip}, {board.name} is a {board.chip} (chip id {board.chip_id})", hint="download the firmware built for this board")
    app_len = len(fw) - app_file
    if app_len > app.size:
        raise FirmwareError(f"the app is {app_len} bytes, its partition {app.label!r} holds {app.size}", hint="build a smaller firmware or use a partition table with a bigger app partition")
    ordered = sorted(parts, key=lambda p: p.offset)
    for a, b in zip(ordered, ordered[1:]):
        if a.end > b.offset:
            raise FirmwareError(f"partitions {a.label!r} and {b.label!r} overlap", hint="the firmware's partition table is broken")
    if ordered[0].offset < board.partition_table_offset + PART_TABLE_MAX:
        raise FirmwareError(f"partition {ordered[0].label!r} overlaps the partition table", hint="the firmware's partition table is broken")
    fs_start, fs_end = fs_bounds(parts, flash_size)
    if max(p.end for p in parts) > flash_size or fs_end > flash_size:
        raise FirmwareError(
            f"the firmware's partition table ends at 0x{max(p.end for p in parts):x}, beyond {flash_size_label(flash_size)} of flash",
            hint="pick the board's bigger flash size, or a firmware built for this one",
        )
    block = board.fs_block_size
    if fs_start % block or fs_end % block:
        raise FirmwareError(f"the filesystem at 0x{fs_start:x}-0x{fs_end:x} is not aligned to {block}-byte blocks", hint="the firmware's partition table is unusual; check it")
    if (fs_end - fs_start) // block < MIN_FS_BLOCKS:
        raise FirmwareError(
            f"only {(fs_end - fs_start) // block} blocks left for the filesystem after 0x{fs_start:x} on {flash_size_label(flash_size)}",
            hint="use a bigger flash size",
        )
    return FirmwareLayout(parts, app, FsGeometry.for_board(board, fs_start, fs_end - fs_start), flash_size)


def _esp_image_end(data: bytes | bytearray, start: int) -> int:
    """Where the ESP-IDF image at `start` ends (segments, checksum pad, appended SHA-256)."""
    nseg = data[start + 1]
    pos = start + 24
    for _ in range(nseg):
        if pos + 8 > len(data):
            raise FirmwareError("the bootloader image is truncated", hint="download the firmware again")
        pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
    pos += 16 - (pos - start) % 16  # padding then the checksum byte, at a 16-byte boundary
    if data[start + 23] == 1:
        pos += 32
    if pos > len(data):
        raise FirmwareError("the bootloader image is truncated", hint="download the firmware again")
    return pos


def set_header_flash_size(fw: bytes, flash_size: int) -> bytes:
    """Writes the flash size into the bootloader's image header (and its appended SHA-256), as
    `esptool write-flash --flash-size` would. ESP-IDF sizes the flash, and so MicroPython the
    vfs partition, from this header: it must say the size the filesystem was built for.
    Doing it here keeps the bytes written identical to the manifest's."""
    code = FLASH_SIZE_CODES.get(flash_size // MIB)
    if code is None:
        raise UsageError(f"esptool cannot set a {flash_size_label(flash_size)} flash size", hint="use 1 to 128 MB")
    out = bytearray(fw)
    if (out[3] & 0xF0) == code:
        return fw
    end = _esp_image_end(out, 0)
    out[3] = code | (out[3] & 0x0F)
    if out[23] == 1:
        out[end - 32 : end] = hashlib.sha256(out[: end - 32]).digest()
    return bytes(out)


# ---- filesystem ----------------------------------------------------------------------------


def make_littlefs(geom: FsGeometry, files: dict[str, bytes]) -> bytes:
    fs = littlefs.LittleFS(block_count=geom.block_count, **geom.lfs_config())
    for path in sorted(files):
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(files[path])
    data = bytes(fs.context.buffer)
    assert len(data) == geom.size
    return data


def mount_littlefs(data: bytes, geom: FsGeometry) -> dict[str, bytes]:
    """Mounts an image as the firmware will (block_count=0: taken from the superblock) and
    returns every file. Raises ImageError if it does not mount or has the wrong block count."""
    try:
        fs = littlefs.LittleFS(context=littlefs.UserContext(buffer=bytearray(data)), block_count=0, mount=True, **geom.lfs_config())
    except Exception as e:  # littlefs raises LittleFSError with a negative code
        raise ImageError(f"the filesystem image does not mount: {e}", hint="rebuild the image with fleetpin image build") from None
    if fs.block_count != geom.block_count:
        raise ImageError(
            f"the filesystem has {fs.block_count} blocks, the partition {geom.block_count}: the board would not mount it",
            hint="rebuild the image for this flash size",
        )
    out: dict[str, bytes] = {}
    for root, _dirs, names in fs.walk("/"):
        for n in names:
            p = (root.rstrip("/") + "/" + n) if root != "/" else "/" + n
            with fs.open(p, "rb") as f:
                out[p] = f.read()
    return out


# ---- build and verify ----------------------------------------------------------------------


def _fleet_of(bundle: bytes) -> str:
    try:
        return str(_bundle.decode_unverified(bundle).fleet)
    except _bundle.BundleError as e:
        raise UsageError(f"the bundle does not parse: {e}", hint="build it with fleetpin bundle build") from None


def _check_trusted(bundle: bytes, signers: bytes, fleet: str) -> None:
    """The board verifies its bundle at every boot: refuse an image whose bundle the signer set
    does not verify (it would boot into safe mode and refuse every pinned connection)."""
    try:
        trusted = _signers.load_signers(signers)
    except _signers.SignerSetError as e:
        raise UsageError(f"the signer set does not parse: {e}", hint="make it with fleetpin key signers") from None
    try:
        _bundle.decode_bundle(bundle, trusted, fleet=fleet, installed_version=None, now=None, time_floor=0)
    except _bundle.BundleError as e:
        raise FleetpinError(f"the signer set does not verify the bundle: {type(e).__name__}: {e}",
                            hint="sign the bundle with a key of this signer set (fleetpin bundle verify --trust)") from None


def build_image(
    board: Board,
    firmware: bytes,
    bundle: bytes,
    signers: bytes,
    flash_size: int,
    out_dir: Path,
    device_dir: Path | None = None,
    app: Path | None = None,
) -> dict[str, Any]:
    """Writes firmware.bin, fs.bin and manifest.json into out_dir; returns the manifest. `app`
    (a .py file or a folder, agent_files.app_files) is the application main.py runs."""
    if not signers:
        raise UsageError("the signer set file is empty", hint="pass the signer set the devices must trust")
    fleet = _fleet_of(bundle)
    _check_trusted(bundle, signers, fleet)
    fw = set_header_flash_size(firmware, flash_size)
    layout = check_firmware(fw, board, flash_size)
    files = board_files(board.mpy_arch, device_dir)
    app_paths: list[str] = []
    if app is not None:
        shipped = app_files(app, board.mpy_arch)
        clash = sorted(set(shipped) & set(files))
        if clash:
            raise UsageError(f"--app {app}: {', '.join(clash)} would replace a file of the agent",
                             hint="rename the module")
        files.update(shipped)
        app_paths = sorted(shipped)
    # The installed-bundle slot: the signer set that verifies it, the bundle, a digest (pinagent.store).
    files[FS_BUNDLE] = _store.encode_slot(signers, bundle)
    files[FS_SIGNERS] = signers
    content: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "board": board.name,
        "chip": board.chip,
        "flash_size": flash_size,
        "fleet": fleet,
        "bundle_sha256": sha256_hex(bundle),
        "signers_sha256": sha256_hex(signers),
        "firmware_sha256": sha256_hex(fw),
        "partitions": [vars(p) for p in layout.partitions],
        "fs": vars(layout.fs) | {"block_count": layout.fs.block_count},
        "files": {p: sha256_hex(d) for p, d in sorted(files.items())},
    }
    if app is not None:
        content["app"] = app_paths  # only then: images without an application keep their ids
    # The id covers everything the image is made of except config.json, which carries it.
    image_id = sha256_hex(canonical_json(content))
    files[FS_CONFIG] = canonical_json({"fleet": fleet, "board": board.name, "image_id": image_id})
    fs_bin = make_littlefs(layout.fs, files)
    mount_littlefs(fs_bin, layout.fs)  # never hand out an image that would not mount
    manifest = {
        "image_id": image_id,
        "board": board.name,
        "flash_size": flash_size,
        "flash_size_label": flash_size_label(flash_size),
        "bundle_sha256": content["bundle_sha256"],
        "regions": [
            {"name": "firmware", "file": "firmware.bin", "offset": board.firmware_offset, "size": len(fw), "sha256": sha256_hex(fw)},
            {"name": "filesystem", "file": "fs.bin", "offset": layout.fs.offset, "size": len(fs_bin), "sha256": sha256_hex(fs_bin)},
        ],
        "content": content,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "firmware.bin").write_bytes(fw)
    (out_dir / "fs.bin").write_bytes(fs_bin)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


@dataclass
class LoadedImage:
    directory: Path
    manifest: dict[str, Any]
    board: Board
    regions: list[dict[str, Any]] = field(default_factory=list)
    bundle_version: int | None = None  # of the bundle in the image's filesystem (verify_image reads it)

    @property
    def fleet(self) -> str:
        return str(self.manifest["content"]["fleet"])

    @property
    def image_id(self) -> str:
        return str(self.manifest["image_id"])

    @property
    def bundle_sha256(self) -> str:
        return str(self.manifest["bundle_sha256"])

    @property
    def flash_size(self) -> int:
        return int(self.manifest["flash_size"])


def load_manifest(image_dir: Path) -> dict[str, Any]:
    try:
        m = json.loads((image_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {image_dir / 'manifest.json'}: {e}", hint="pass a directory made by fleetpin image build") from None
    if not isinstance(m, dict) or not isinstance(m.get("content"), dict) or not isinstance(m.get("regions"), list):
        raise ImageError(f"{image_dir / 'manifest.json'} is not a fleetpin image manifest", hint="rebuild the image")
    return m


def verify_image(image_dir: Path, boards_dir: Path | None = None) -> LoadedImage:
    """Checks an image directory end to end: the id, every region's size and SHA-256, the
    firmware against the board, and the filesystem remounted with the geometry the board
    will use, file by file. Raises ImageError on the first thing wrong."""
    m = load_manifest(image_dir)
    try:
        content = m["content"]
        board = get_board(str(m["board"]), boards_dir)
        if sha256_hex(canonical_json(content)) != m["image_id"]:
            raise ImageError("the manifest's content does not hash to its image id: it was edited", hint="rebuild the image")
        if content["board"] != m["board"] or content["flash_size"] != m["flash_size"] or content["bundle_sha256"] != m["bundle_sha256"]:
            raise ImageError("the manifest's summary disagrees with its content", hint="rebuild the image")
        blobs: dict[str, bytes] = {}
        for r in m["regions"]:
            path = image_dir / str(r["file"])
            try:
                data = path.read_bytes()
            except OSError as e:
                raise ImageError(f"region {r['name']}: {e}", hint="copy the whole image directory") from None
            if len(data) != r["size"] or sha256_hex(data) != r["sha256"]:
                raise ImageError(f"{path.name} does not match the manifest (size or SHA-256)", hint="the file was altered or truncated; rebuild or copy it again")
            blobs[str(r["name"])] = data
        fw, fs_bin = blobs["firmware"], blobs["filesystem"]
        offsets = {str(r["name"]): int(r["offset"]) for r in m["regions"]}
        layout = check_firmware(fw, board, int(m["flash_size"]))
        if offsets["firmware"] != board.firmware_offset or sha256_hex(fw) != content["firmware_sha256"]:
            raise ImageError("the firmware region is not the one the image was built with", hint="rebuild the image")
        if offsets["filesystem"] != layout.fs.offset or len(fs_bin) != layout.fs.size:
            raise ImageError(
                f"the filesystem region 0x{offsets['filesystem']:x}+0x{len(fs_bin):x} is not where the firmware mounts it (0x{layout.fs.offset:x}+0x{layout.fs.size:x})",
                hint="rebuild the image for this firmware and flash size",
            )
        files = mount_littlefs(fs_bin, layout.fs)
        config = files.pop(FS_CONFIG, None)
        want = {"fleet": content["fleet"], "board": board.name, "image_id": m["image_id"]}
        if config is None or json.loads(config) != want:
            raise ImageError("the filesystem's /fleetpin/config.json does not name this image", hint="rebuild the image")
        got = {p: sha256_hex(d) for p, d in files.items()}
        if got != content["files"]:
            diff = sorted(set(got.items()) ^ set(content["files"].items()))
            raise ImageError(f"the filesystem's files differ from the manifest: {', '.join(p for p, _ in diff[:5])}", hint="rebuild the image")
        version = _bundle_version(files.get(FS_BUNDLE))
    except (KeyError, TypeError, ValueError) as e:
        raise ImageError(f"the manifest is incomplete or malformed ({type(e).__name__}: {e})", hint="rebuild the image") from None
    return LoadedImage(image_dir, m, board, list(m["regions"]), version)


def bundle_identity(bundle: bytes) -> tuple[str, int]:
    """(fleet, version) from a bundle's header (no signature check)."""
    try:
        b = _bundle.decode_unverified(bundle)
    except _bundle.BundleError as e:
        raise UsageError(f"the bundle does not parse: {e}", hint="build it with fleetpin bundle build") from None
    return str(b.fleet), int(b.version)


def _bundle_version(slot: bytes | None) -> int:
    """The version of the bundle in the image's installed-bundle slot; ImageError if there is
    none that decodes (the board would boot into safe mode)."""
    try:
        if slot is None:
            raise ValueError("no /fleetpin/bundle.bin")
        bundle = _store.decode_slot(slot)[1]
        return int(_bundle.decode_unverified(bytes(bundle)).version)
    except (ValueError, _store.StoreError, _bundle.BundleError) as e:
        raise ImageError(f"the image's installed bundle does not decode: {e}", hint="rebuild the image") from None
