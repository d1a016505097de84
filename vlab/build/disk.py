"""Disk images as users bring them: the format (raw or qcow2, told by the bytes, never by the
name), the partition table (GPT or MBR) and the filesystem each partition holds, and which
partition is the root and which /boot. Read-only, in process: the image is untrusted data, so
every offset and count it gives is bounded by the file's own size before it is used."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# (name, offset, magic) of the filesystems vlab mounts from an image: a root may hold the
# first four, a /boot partition any of them.
FS_MAGIC = (("ext4", 1080, b"\x53\xef"), ("xfs", 0, b"XFSB"), ("btrfs", 65600, b"_BHRfS_M"),
            ("squashfs", 0, b"hsqs"), ("vfat", 82, b"FAT32   "), ("vfat", 54, b"FAT16   "),
            ("vfat", 54, b"FAT12   "))
ROOT_FILESYSTEMS = ("ext4", "xfs", "btrfs", "squashfs")
# (offset, length) of each filesystem's label in its superblock.
FS_LABEL = {"ext4": (1024 + 120, 16), "xfs": (108, 12), "btrfs": (65536 + 0x12B, 256)}
FAT_LABEL = {82: (71, 11), 54: (43, 11)}  # by where its FAT type string was found

QCOW2_MAGIC = b"QFI\xfb"
# Formats vlab names but does not read: the fix is one qemu-img convert.
OTHER_FORMATS = ((0, b"KDMV", "vmdk"), (0, b"vhdxfile", "vhdx"), (0, b"conectix", "vpc"),
                 (64, b"\x7f\x10\xda\xbe", "vdi"))

SECTOR = 512
# The Discoverable Partitions Specification's type GUIDs (x86-64), and the generic ones.
ROOT_X86_64 = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
XBOOTLDR = uuid.UUID("bc13c2ff-59e6-4262-a352-b275fd6f7172")
ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
LINUX_DATA = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
NO_AUTO = 1 << 63  # GPT attribute: not to be found by discovery
MBR_LINUX, MBR_ESP, MBR_XBOOTLDR, MBR_GPT = 0x83, 0xEF, 0xEA, 0xEE
MBR_EXTENDED = (0x05, 0x0F, 0x85)
MAX_GPT_ENTRIES = 1024


class DiskError(Exception):
    """The image is not what vlab can boot from; the message says what it saw, and key
    names the scenario key it is about: [root] partition or boot_partition when the scenario
    named the partition, else path (what discovery found in the image)."""

    def __init__(self, message: str, key: str = "path") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Partition:
    number: int  # as the table numbers it (1-based), as in /dev/sdaN
    offset: int  # bytes into the raw disk
    size: int
    kind: str  # "root", "xbootldr", "esp", "linux", "extended" or the raw type
    label: str  # GPT partition name ("" for MBR)
    fstype: str | None
    fslabel: str
    auto: bool  # discovery may pick it (no GPT no-auto attribute)

    def describe(self) -> str:
        names = ", ".join(f"{what} {name!r}" for what, name in
                          (("label", self.label), ("filesystem label", self.fslabel)) if name)
        return (f"{self.number}: {self.kind}, {self.fstype or 'no filesystem vlab mounts'}, "
                f"{self.size >> 20} MiB" + (f", {names}" if names else ""))


def image_format(path: Path) -> str:
    """ "qcow2" or "raw"; any other format vlab knows of is refused with its name."""
    with path.open("rb") as f:
        head = f.read(72)
    if head[:4] == QCOW2_MAGIC:
        return "qcow2"
    for offset, magic, name in OTHER_FORMATS:
        if head[offset:offset + len(magic)] == magic:
            raise DiskError(f"is a {name} image, which vlab does not read; convert it: "
                            f"qemu-img convert -f {name} -O qcow2 IMAGE IMAGE.qcow2")
    return "raw"


def qcow2_problem(path: Path) -> str | None:
    """Why vlab refuses this qcow2 image, or None: a backing file or an external data file
    would make QEMU read another file (any file the image names) into the root."""
    with path.open("rb") as f:
        head = f.read(104)
    if len(head) < 72:
        return "is too short for a qcow2 header"
    version, backing_offset = struct.unpack(">IQ", head[4:16])
    if backing_offset:
        return ("names a backing file, which vlab does not follow (an image could name any "
                "file); flatten it: qemu-img convert -O qcow2 IMAGE FLAT.qcow2")
    if version >= 3 and len(head) >= 80:
        incompatible = struct.unpack(">Q", head[72:80])[0]
        if incompatible & 0b100:
            return ("keeps its data in an external data file, which vlab does not follow; "
                    "flatten it: qemu-img convert -O qcow2 IMAGE FLAT.qcow2")
    return None


def _read(f: BinaryIO, offset: int, length: int, size: int) -> bytes:
    if offset < 0 or length < 0 or offset + length > size:
        return b""
    f.seek(offset)
    return f.read(length)


def _filesystem(f: BinaryIO, offset: int, length: int) -> tuple[str | None, str]:
    """The filesystem that starts at offset (within a partition of length bytes), and its
    label ("" if it has none)."""
    f.seek(offset)
    head = f.read(min(65608, length))
    for name, at, magic in FS_MAGIC:
        if head[at:at + len(magic)] == magic:
            start, size = FAT_LABEL[at] if name == "vfat" else FS_LABEL.get(name, (0, 0))
            label = head[start:start + size].split(b"\0", 1)[0]
            text = label.decode("utf-8", "replace")
            return name, text.strip() if name == "vfat" else text
    return None, ""


def filesystem_of(path: Path) -> str | None:
    """The root filesystem a bare (unpartitioned) image holds, or None."""
    try:
        with path.open("rb") as f:
            fstype = _filesystem(f, 0, path.stat().st_size)[0]
    except OSError:
        return None
    return fstype if fstype in ROOT_FILESYSTEMS else None


def partitions(path: Path) -> list[Partition]:
    """The partitions of a raw disk image (GPT, else MBR); [] when it has no table."""
    size = path.stat().st_size
    with path.open("rb") as f:
        mbr = _read(f, 0, SECTOR, size)
        if _read(f, SECTOR, 8, size) == b"EFI PART":
            return _gpt(f, size)
        if len(mbr) == SECTOR and mbr[510:512] == b"\x55\xaa":
            return _mbr(f, mbr, size)
    return []


def _gpt(f: BinaryIO, size: int) -> list[Partition]:
    header = _read(f, SECTOR, 92, size)
    entries_lba, count, entry_size = struct.unpack("<QII", header[72:88])
    if not (128 <= entry_size <= 4096 and count <= MAX_GPT_ENTRIES):
        raise DiskError(f"has a GPT header with {count} entries of {entry_size} bytes: "
                        "not a table vlab reads")
    table = _read(f, entries_lba * SECTOR, count * entry_size, size)
    if len(table) != count * entry_size:
        raise DiskError("has a GPT whose partition entries lie beyond the end of the file")
    found = []
    for i in range(count):
        entry = table[i * entry_size:(i + 1) * entry_size]
        type_guid = uuid.UUID(bytes_le=entry[:16])
        if type_guid.int == 0:
            continue
        first, last, attrs = struct.unpack("<QQQ", entry[32:56])
        offset, length = first * SECTOR, (last - first + 1) * SECTOR
        if last < first or offset + length > size:
            raise DiskError(f"has a GPT partition {i + 1} that lies beyond the end of the file")
        kind = {ROOT_X86_64: "root", XBOOTLDR: "xbootldr", ESP: "esp",
                LINUX_DATA: "linux"}.get(type_guid, str(type_guid))
        fstype, fslabel = _filesystem(f, offset, length)
        label = entry[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        found.append(Partition(i + 1, offset, length, kind, label, fstype, fslabel,
                               auto=not attrs & NO_AUTO))
    return found


def _mbr(f: BinaryIO, mbr: bytes, size: int) -> list[Partition]:
    found = []
    for i in range(4):
        entry = mbr[446 + 16 * i:446 + 16 * (i + 1)]
        ptype = entry[4]
        start, sectors = struct.unpack("<II", entry[8:16])
        if ptype == 0 or sectors == 0:
            continue
        if ptype == MBR_GPT:
            raise DiskError("has a protective MBR but no GPT header where it belongs")
        offset, length = start * SECTOR, sectors * SECTOR
        if offset + length > size:
            raise DiskError(f"has an MBR partition {i + 1} that lies beyond the end of the file")
        kind = {MBR_LINUX: "linux", MBR_ESP: "esp", MBR_XBOOTLDR: "xbootldr"}.get(
            ptype, "extended" if ptype in MBR_EXTENDED else f"type 0x{ptype:02x}")
        fstype, fslabel = (None, "") if kind == "extended" else _filesystem(f, offset, length)
        found.append(Partition(i + 1, offset, length, kind, "", fstype, fslabel, auto=True))
    return found


def _named(parts: list[Partition], wanted: int | str, seen: str, key: str) -> Partition:
    """The partition the scenario names in key, by number or by partition or filesystem
    label."""
    what = " for /boot" if key == "boot_partition" else ""
    if isinstance(wanted, int):
        hits = [p for p in parts if p.number == wanted]
    else:
        hits = [p for p in parts if wanted in (p.label, p.fslabel)]
    if len(hits) > 1:
        raise DiskError(f"has {len(hits)} partitions labelled {wanted!r} (partitions: {seen})",
                        key)
    if not hits:
        raise DiskError(f"has no partition {wanted!r}{what} (partitions: {seen})", key)
    return hits[0]


def _found(parts: list[Partition], kind: str) -> list[Partition]:
    """The partitions discovery may pick for a kind ("root", "xbootldr", "linux")."""
    return [p for p in parts if p.kind == kind and p.auto
            and (kind != "linux" or p.fstype in ROOT_FILESYSTEMS)]


def choose(parts: list[Partition], root: int | str | None,
           boot: int | str | None) -> tuple[Partition, Partition | None]:
    """The root partition and the /boot partition (None: /boot is on the root). Root: the one
    the scenario names, else the one the Discoverable Partitions Specification marks as the
    x86-64 root, else the only Linux filesystem partition. /boot: the one named, else the
    XBOOTLDR one. A choice that is wrong or not unique raises DiskError naming what it saw."""
    seen = "; ".join(p.describe() for p in parts) or "no partitions"
    if root is not None:
        picked = _named(parts, root, seen, "partition")
    else:
        candidates = _found(parts, "root") or _found(parts, "linux")
        if len(candidates) != 1:
            why = ("no partition is marked as the x86-64 root and none is the only Linux "
                   "filesystem" if not candidates else
                   f"{len(candidates)} partitions could be the root")
            raise DiskError(f"{why} (partitions: {seen}); name it in [root] partition = "
                            "NUMBER or \"LABEL\"")
        picked = candidates[0]
    if picked.fstype not in ROOT_FILESYSTEMS:
        raise DiskError(f"partition {picked.number} holds no root filesystem vlab can mount "
                        f"(ext4, xfs, btrfs, squashfs; partitions: {seen})",
                        "path" if root is None else "partition")
    if boot is not None:
        boot_part: Partition | None = _named(parts, boot, seen, "boot_partition")
    else:
        xboot = _found(parts, "xbootldr")
        if len(xboot) > 1:
            raise DiskError(f"has {len(xboot)} XBOOTLDR (/boot) partitions (partitions: "
                            f"{seen}); name one in [root] boot_partition")
        boot_part = xboot[0] if xboot else None
    if boot_part is not None and (boot_part.fstype is None or boot_part == picked):
        raise DiskError(f"partition {boot_part.number} cannot be /boot: "
                        + ("it is the root" if boot_part == picked else
                           "it holds no filesystem vlab can mount") + f" (partitions: {seen})",
                        "path" if boot is None else "boot_partition")
    return picked, boot_part
