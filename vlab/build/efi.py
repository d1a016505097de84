"""The UEFI network loaders: Debian's signed shim and signed network GRUB, and the folder that
GRUB reads its configuration from, read from its own image (its built-in prefix). x86's are the
machine's installed packages; arm64's are Debian's arm64 builds of the same packages, fetched
with apt into the cache (files, never run here). And the twins' firmware: OVMF, AAVMF."""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from vlab.build import apt, cache
from vlab.errors import HostError, MissingTool
from vlab.scenario.model import Arch

# The boot file a UEFI host gets by DHCP, and the GRUB shim loads from the folder it came from.
SHIMS = {Arch.AMD64: "shimx64.efi", Arch.ARM64: "shimaa64.efi"}
GRUBS = {Arch.AMD64: "grubx64.efi", Arch.ARM64: "grubaa64.efi"}
SHIM, GRUB = SHIMS[Arch.AMD64], GRUBS[Arch.AMD64]
# How DHCP tells a UEFI client's architecture (option 93, RFC 4578 and IANA's list): x86-64's
# 7 and 9, arm64's 11; and the tag the DHCP snippets give it.
CLIENT_ARCH = {Arch.AMD64: (7, 9), Arch.ARM64: (11,)}
EFI_TAG = {Arch.AMD64: "efi-x86_64", Arch.ARM64: "efi-arm64"}
# arm64's: package, and the file in it (the network GRUB: tftp and efinet built in).
ARM64_LOADERS = {
    SHIMS[Arch.ARM64]: ("shim-signed", "usr/lib/shim/shimaa64.efi.signed"),
    GRUBS[Arch.ARM64]: ("grub-efi-arm64-signed",
                        "usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed"),
}
LOADERS = {
    SHIM: (Path("/usr/lib/shim/shimx64.efi.signed"), "shim-signed"),
    # The network image: tftp and efinet built in, its prefix set to a TFTP folder.
    GRUB: (Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
           "grub-efi-amd64-signed"),
}

OVMF = Path("/usr/share/OVMF")
AAVMF = Path("/usr/share/AAVMF")
# A twin's firmware: OVMF's code and the variable store each twin gets a copy of. Secure Boot:
# the build that enforces it (SMM), with Microsoft's keys enrolled (which sign Debian's shim).
# arm64's, AAVMF, enforces Secure Boot where its variables have the keys enrolled (no SMM).
FIRMWARE = {
    (Arch.AMD64, "uefi"): (OVMF / "OVMF_CODE_4M.fd", OVMF / "OVMF_VARS_4M.fd"),
    (Arch.AMD64, "uefi-secure"): (OVMF / "OVMF_CODE_4M.secboot.fd", OVMF / "OVMF_VARS_4M.ms.fd"),
    (Arch.ARM64, "uefi"): (AAVMF / "AAVMF_CODE.fd", AAVMF / "AAVMF_VARS.fd"),
    (Arch.ARM64, "uefi-secure"): (AAVMF / "AAVMF_CODE.fd", AAVMF / "AAVMF_VARS.ms.fd"),
}
FIRMWARE_PACKAGES = {Arch.AMD64: "ovmf", Arch.ARM64: "qemu-efi-aarch64"}


def firmware(kind: str, arch: Arch = Arch.AMD64) -> tuple[Path, Path]:
    """OVMF's (AAVMF's) code and variable template for a UEFI guest."""
    for path in FIRMWARE[arch, kind]:
        if not path.is_file():
            raise MissingTool(f"UEFI firmware ({path})", FIRMWARE_PACKAGES[arch])
    return FIRMWARE[arch, kind]


MODULE_MAGIC = 0x676D696D  # "mimg": GRUB's module area (grub_module_info64)
OBJ_TYPE_PREFIX = 3  # an entry of that area: the prefix grub-mkimage -p gave
MAX_SECTIONS = 96


@dataclass(frozen=True)
class Loaders:
    files: dict[str, Path]  # name in the TFTP root -> the installed file
    grub_dir: str  # the folder (relative to the TFTP root) GRUB reads grub.cfg from


def loaders(arch: Arch = Arch.AMD64, cache_dir: Path | None = None) -> Loaders:
    """The signed shim and network GRUB for UEFI hosts of `arch` (arm64's need the cache)."""
    if arch is Arch.ARM64:
        assert cache_dir is not None
        files = {name: _fetched(package, inside, cache_dir)
                 for name, (package, inside) in ARM64_LOADERS.items()}
    else:
        for name, (path, package) in LOADERS.items():
            if not path.is_file():
                raise MissingTool(f"{name} ({path})", package)
        files = {name: path for name, (path, _p) in LOADERS.items()}
    grub = files[GRUBS[arch]]
    return Loaders(files=files, grub_dir=grub_prefix(grub.read_bytes(), str(grub)))


def _fetched(package: str, inside: str, cache_dir: Path) -> Path:
    """One file of a Debian arm64 package, downloaded and unpacked into the cache once."""
    name, version = apt.resolve_cached(apt.name(package, Arch.ARM64), cache_dir)
    final = cache_dir / "efi" / f"{package}_{version.replace(':', '_')}_arm64"
    wanted = final / Path(inside).name
    if not wanted.is_file():
        with cache.publish(final) as tmp:
            tmp.mkdir()
            unpacked = apt.download(name, version, tmp)
            (unpacked / inside).rename(tmp / Path(inside).name)
            shutil.rmtree(unpacked)
            (tmp / Path(inside).name).chmod(0o644)
            tmp.chmod(0o755)
    return wanted


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
