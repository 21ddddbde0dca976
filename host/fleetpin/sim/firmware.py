"""A stand-in MicroPython `firmware.bin` for demos and tests: an ESP-IDF bootloader image, a real
ESP-IDF binary partition table at flash 0x8000 (MicroPython's partitions-4MiBplus.csv), and an
app image in the factory partition, laid out as MicroPython's combined image is (file offset =
flash offset - the board's firmware offset). The images carry no MicroPython code -- a virtual
board runs the filesystem's main.py on MicroPython's unix port instead -- but their headers, checksums and appended SHA-256 are what
esptool's `image-info` accepts, so esptool and `fleetpin image build` treat it as a real build.

    stand_in_firmware("esp32") -> bytes
"""

from __future__ import annotations

import hashlib
import struct

from fleetpin.line.boards import get_board
from fleetpin.line.chips import image_chip_id

PART_MAGIC = b"\xaa\x50"
MD5_MAGIC = b"\xeb\xeb"
PARTITION_TABLE_OFFSET = 0x8000

# MicroPython's partitions-4MiBplus.csv (ESP32_GENERIC and friends since 1.26)
MICROPYTHON_PARTITIONS: list[tuple[str, int, int, int, int]] = [
    # label, type, subtype, offset, size
    ("nvs", 0x01, 0x02, 0x9000, 0x6000),
    ("phy_init", 0x01, 0x01, 0xF000, 0x1000),
    ("factory", 0x00, 0x00, 0x10000, 0x1F0000),
]
# A custom table with a smaller factory partition: the filesystem starts at 0x180000, not at the
# board file's fs_start (0x200000), so whoever mounts it must read the table.
SMALL_APP_PARTITIONS: list[tuple[str, int, int, int, int]] = [
    ("nvs", 0x01, 0x02, 0x9000, 0x6000),
    ("phy_init", 0x01, 0x01, 0xF000, 0x1000),
    ("factory", 0x00, 0x00, 0x10000, 0x170000),
]


def esp_image(chip: str, payload: bytes, *, chip_id: int | None = None, load_addr: int = 0x3FFB0000) -> bytes:
    """One ESP-IDF app/bootloader image: 8-byte header, 16-byte extended header, one segment,
    checksum byte at a 16-byte boundary, then the SHA-256 of everything before it."""
    cid = image_chip_id(chip) if chip_id is None else chip_id
    data = payload + b"\x00" * (-len(payload) % 4)
    header = struct.pack("<BBBBI", 0xE9, 1, 2, 0x20, 0x40080000)  # DIO, 4MB/40MHz
    # wp_pin, spi drive x3, chip id (u16), min_rev, min_rev_full, max_rev_full, reserved x4, hash appended
    ext = struct.pack("<B3sHBHH4sB", 0xEE, b"\x00\x00\x00", cid, 0, 0, 0xFFFF, b"\x00" * 4, 1)
    body = header + ext + struct.pack("<II", load_addr, len(data)) + data
    checksum = 0xEF
    for b in data:
        checksum ^= b
    body += b"\x00" * (15 - len(body) % 16) + bytes([checksum])
    return body + hashlib.sha256(body).digest()


def partition_table(entries: list[tuple[str, int, int, int, int]]) -> bytes:
    """ESP-IDF binary partition table: 32-byte entries, then the MD5 entry, padded with 0xFF."""
    out = b""
    for label, ptype, subtype, offset, size in entries:
        out += PART_MAGIC + struct.pack("<BBII16sI", ptype, subtype, offset, size, label.encode(), 0)
    out += MD5_MAGIC + b"\xff" * 14 + hashlib.md5(out).digest()
    return out + b"\xff" * (0xC00 - len(out))


def make_firmware(
    chip: str = "esp32",
    firmware_offset: int = 0x1000,
    *,
    app_size: int = 64 * 1024,
    app_payload: bytes | None = None,
    partitions: list[tuple[str, int, int, int, int]] | None = None,
    app_chip: str | None = None,
    bootloader_chip: str | None = None,
) -> bytes:
    """A combined firmware.bin; app_chip/bootloader_chip make deliberately mismatched ones,
    app_payload (e.g. random bytes) one that does not compress, so it takes a while to write."""
    parts = MICROPYTHON_PARTITIONS if partitions is None else partitions
    factory = next(p for p in parts if p[1] == 0x00)
    bootloader = esp_image(bootloader_chip or chip, b"BOOT" * 1024)
    payload = bytes(range(256)) * (app_size // 256) if app_payload is None else app_payload
    app = esp_image(app_chip or chip, payload, load_addr=0x3F400020)
    img = bytearray(b"\xff" * (factory[3] - firmware_offset))
    img[0 : len(bootloader)] = bootloader
    pt = PARTITION_TABLE_OFFSET - firmware_offset
    img[pt : pt + 0xC00] = partition_table(parts)
    return bytes(img) + app


# ---- a board to flash it onto --------------------------------------------------------------


def stand_in_firmware(board: str = "esp32") -> bytes:
    """The stand-in firmware for a board of boards/ (its chip and firmware offset)."""
    b = get_board(board)
    return make_firmware(b.chip, b.firmware_offset)
