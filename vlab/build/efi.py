"""The UEFI network loaders: Debian's signed shim and signed network GRUB, and the folder that
GRUB reads its configuration from, read from its own image (its built-in prefix)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from vlab.errors import HostError, MissingTool

SHIM = "shimx64.efi"  # the boot file a UEFI host gets by DHCP
GRUB = "grubx64.efi"  # shim loads this name from the folder it came from
LOADERS = {
    SHIM: (Path("/usr/lib/shim/shimx64.efi.signed"), "shim-signed"),
    # The network image: tftp and efinet built in, its prefix set to a TFTP folder.
    GRUB: (Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
           "grub-efi-amd64-signed"),
}

OVMF = Path("/usr/share/OVMF")
# A twin's firmware: OVMF's code and the variable store each twin gets a copy of. Secure Boot:
# the build that enforces it (SMM), with Microsoft's keys enrolled (which sign Debian's shim).
FIRMWARE = {
    "uefi": (OVMF / "OVMF_CODE_4M.fd", OVMF / "OVMF_VARS_4M.fd"),
    "uefi-secure": (OVMF / "OVMF_CODE_4M.secboot.fd", OVMF / "OVMF_VARS_4M.ms.fd"),
}


def firmware(kind: str) -> tuple[Path, Path]:
    """OVMF's code and variable template for a UEFI twin."""
    for path in FIRMWARE[kind]:
        if not path.is_file():
            raise MissingTool(f"OVMF ({path})", "ovmf")
    return FIRMWARE[kind]


MODULE_MAGIC = 0x676D696D  # "mimg": GRUB's module area (grub_module_info64)
OBJ_TYPE_PREFIX = 3  # an entry of that area: the prefix grub-mkimage -p gave
MAX_SECTIONS = 96


@dataclass(frozen=True)
class Loaders:
    files: dict[str, Path]  # name in the TFTP root -> the installed file
    grub_dir: str  # the folder (relative to the TFTP root) GRUB reads grub.cfg from


def loaders() -> Loaders:
    for name, (path, package) in LOADERS.items():
        if not path.is_file():
            raise MissingTool(f"{name} ({path})", package)
    grub = LOADERS[GRUB][0]
    return Loaders(files={name: path for name, (path, _p) in LOADERS.items()},
                   grub_dir=grub_prefix(grub.read_bytes(), str(grub)))


def grub_prefix(image: bytes, name: str) -> str:
    """The folder a GRUB EFI image reads grub.cfg from: the prefix grub-mkimage built into
    its `mods` section, without a device ("(tftp)/grub" and "/grub" are both "grub")."""
    try:
        mods = _section(image, b"mods")
        magic, _pad, offset, size = struct.unpack_from("<IIQQ", mods, 0)
        if magic != MODULE_MAGIC or size > len(mods):
            raise ValueError("no module area")
        at = offset
        while at + 8 <= size:
            kind, length = struct.unpack_from("<II", mods, at)
            if length < 8:
                raise ValueError("a module entry shorter than its header")
            if kind == OBJ_TYPE_PREFIX:
                prefix = mods[at + 8:at + length].split(b"\0")[0].decode()
                folder = prefix.split(")", 1)[-1].strip("/")
                if not folder or ".." in folder.split("/"):
                    raise ValueError(f"a prefix vlab cannot use: {prefix!r}")
                return folder
            at += length
    except (ValueError, struct.error, UnicodeDecodeError) as err:
        raise HostError(f"{name}: cannot read GRUB's built-in prefix ({err})") from None
    raise HostError(f"{name}: GRUB's image names no prefix (built without -p)")


def _section(image: bytes, wanted: bytes) -> bytes:
    """One section of a PE image, by name."""
    pe = struct.unpack_from("<I", image, 0x3C)[0]
    if image[pe:pe + 4] != b"PE\0\0":
        raise ValueError("not a PE image")
    count, = struct.unpack_from("<H", image, pe + 6)
    optional, = struct.unpack_from("<H", image, pe + 20)
    table = pe + 24 + optional
    for i in range(min(count, MAX_SECTIONS)):
        name, _vsize, _vaddr, raw_size, raw_at = struct.unpack_from("<8sIIII", image,
                                                                   table + 40 * i)
        if name.rstrip(b"\0") == wanted:
            if raw_at + raw_size > len(image):
                raise ValueError(f"section {wanted.decode()} lies beyond the end of the file")
            return image[raw_at:raw_at + raw_size]
    raise ValueError(f"no {wanted.decode()} section")


CERTIFICATE_TABLE = 4  # the PE data directory that holds an image's Authenticode signatures
PE32_PLUS = 0x20B


def signed(image: bytes) -> bool:
    """Does a PE image (a bzImage with its EFI stub) carry an Authenticode signature? shim
    starts no image without one under Secure Boot; which key signed it vlab cannot tell (a
    site may have enrolled its own with mokutil)."""
    try:
        pe = struct.unpack_from("<I", image, 0x3C)[0]
        if image[pe:pe + 4] != b"PE\0\0":
            return False
        optional = pe + 24
        magic, = struct.unpack_from("<H", image, optional)
        if magic != PE32_PLUS:
            return False
        count, = struct.unpack_from("<I", image, optional + 108)
        if count <= CERTIFICATE_TABLE:
            return False
        at: int
        size: int
        at, size = struct.unpack_from("<II", image, optional + 112 + 8 * CERTIFICATE_TABLE)
    except struct.error:
        return False
    return size > 8 and at + size <= len(image)
