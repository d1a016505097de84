"""Direct-boot speed: the uncompressed kernel ELF that QEMU starts through its PVH entry point.

QEMU boots an ELF kernel with a XEN_ELFNOTE_PHYS32_ENTRY note without running the bzImage's
decompressor, which under TCG costs about 2.5 s of every boot (Debian's kernels are
XZ-compressed). Pure functions on bytes; kernel.py decides when to use them.
"""

from __future__ import annotations

import lzma
import struct
import zlib

XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_NOTE = 4
_MAGICS = ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip"))


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF inside a bzImage, if it is compressed with a format Python can read."""
    for magic, kind in _MAGICS:
        start = bzimage.find(magic)
        while start != -1:
            try:
                if kind == "xz":
                    out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
                else:
                    out = zlib.decompressobj(wbits=31).decompress(bzimage[start:])
            except (lzma.LZMAError, zlib.error):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            start = bzimage.find(magic, start + 1)
    return None


def has_pvh_entry(elf: bytes) -> bool:
    """Does a 64-bit little-endian ELF carry the PVH entry note QEMU looks for?"""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    for i in range(phnum):
        p_type, _flags, offset, _vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != PT_NOTE:
            continue
        pos, end = offset, offset + filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False
