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
# The largest kernel ELF vlab decompresses (Debian's is ~63 MiB): a decompression bomb stops
# here, in memory and in time.
MAX_VMLINUX = 128 << 20
CHUNK = 8 << 20


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF inside a bzImage, if it is compressed with a format Python can read. The
    compressed payload is where the boot protocol's header says (payload_offset and
    payload_length, protocol 2.08 and later): one place, read once, so the work is linear in
    the file's size whatever an image's kernel holds."""
    payload = _payload(bzimage)
    if payload is None:
        return None
    try:
        out = _inflate(payload)
    except (lzma.LZMAError, zlib.error, EOFError):
        return None
    return bytes(out) if out is not None and out[:len(ELF)] == ELF else None


ELF, XZ, GZIP = b"\x7fELF", b"\xfd7zXZ\x00", b"\x1f\x8b\x08"


def _too_much(out: bytearray) -> bool:
    """Past MAX_VMLINUX, or no ELF from its first bytes: stop decompressing."""
    return len(out) > MAX_VMLINUX or not ELF.startswith(bytes(out[:len(ELF)]))


def _inflate(payload: memoryview) -> bytearray | None:
    """The xz or gzip payload decompressed, CHUNK bytes at a time; None if it is neither,
    past MAX_VMLINUX, or if it does not start as an ELF."""
    out = bytearray()
    if payload[:len(GZIP)] == GZIP:
        gz = zlib.decompressobj(wbits=31)
        data: bytes | memoryview = payload
        while not gz.eof:
            chunk = gz.decompress(data, CHUNK)
            data = gz.unconsumed_tail
            out += chunk
            if _too_much(out):
                return None
            if not chunk and not data:
                break
        return out
    if payload[:len(XZ)] != XZ:
        return None
    xz = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    data = payload
    while not xz.eof:
        chunk = xz.decompress(data, max_length=CHUNK)
        data = b""
        out += chunk
        if _too_much(out):
            return None
        if not chunk and xz.needs_input:
            break
    return out


def _payload(bzimage: bytes) -> memoryview | None:
    """The compressed kernel as the setup header locates it; None if there is no such header."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        return None
    version, = struct.unpack_from("<H", bzimage, 0x206)
    if version < 0x0208:
        return None
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if start + length > len(bzimage) or length == 0:
        return None
    return memoryview(bzimage)[start:start + length]


def has_pvh_entry(elf: bytes) -> bool:
    """Does a 64-bit little-endian ELF carry the PVH entry note QEMU looks for? (Its
    headers are the image's: a field that points past the end is no note, not a crash.)"""
    try:
        return _has_pvh_entry(elf)
    except (struct.error, IndexError):
        return False


def _has_pvh_entry(elf: bytes) -> bool:
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
