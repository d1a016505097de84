"""The PVH kernel image: found inside a bzImage, and recognised by its ELF note."""

from __future__ import annotations

import gzip
import lzma
import struct

from vlab.build.pvh import XEN_ELFNOTE_PHYS32_ENTRY, extract_vmlinux, has_pvh_entry


def elf_with_note(name: bytes, note_type: int) -> bytes:
    """A minimal 64-bit little-endian ELF with one PT_NOTE segment holding one note."""
    desc = struct.pack("<Q", 0x1000850)
    padded = name + b"\0" * (-len(name) % 4)
    note = struct.pack("<III", len(name), len(desc), note_type) + padded + desc
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", ehdr, 32, 64)  # e_phoff
    struct.pack_into("<HH", ehdr, 54, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(note), len(note), 4)
    return bytes(ehdr) + phdr + note


def test_pvh_note_is_recognised() -> None:
    assert has_pvh_entry(elf_with_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY))
    assert not has_pvh_entry(elf_with_note(b"Xen\0", 5))
    assert not has_pvh_entry(elf_with_note(b"GNU\0", XEN_ELFNOTE_PHYS32_ENTRY))
    assert not has_pvh_entry(b"MZ not an elf")


def bzimage(payload: bytes, decoy: bytes = b"\xfd7zXZ\x00 not really") -> bytes:
    """A bzImage as the boot protocol lays it out: setup sectors with the header (HdrS,
    version 2.15, payload_offset and payload_length), then the protected-mode code holding
    the compressed kernel after a decoy that starts like one."""
    setup_sects = 4
    header = bytearray(setup_sects * 512 + 512)
    header[0x1F1] = setup_sects
    header[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", header, 0x206, 0x020F)
    struct.pack_into("<II", header, 0x248, len(decoy), len(payload))
    return bytes(header) + decoy + payload + b"\x00\x10\x00\x00"


def test_elf_is_found_inside_an_xz_or_gzip_bzimage() -> None:
    elf = elf_with_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY)
    for packed in (lzma.compress(elf, format=lzma.FORMAT_XZ), gzip.compress(elf)):
        assert extract_vmlinux(bzimage(packed)) == elf


# An image's kernel against the parser (issue 27, finding 4): each was unbounded or crashed.
def test_a_decompression_bomb_stops_at_the_cap() -> None:
    """300 KB of xz that inflates to 300 MB: decompressed no further than MAX_VMLINUX."""
    import tracemalloc

    from vlab.build.pvh import MAX_VMLINUX

    bomb = lzma.compress(b"\x7fELF" + b"\x00" * (300 << 20), format=lzma.FORMAT_XZ,
                         preset=9)
    assert len(bomb) < 400_000
    tracemalloc.start()
    try:
        assert extract_vmlinux(bzimage(bomb)) is None
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MAX_VMLINUX + (32 << 20), peak  # the buffer, and its copy as it grows


def test_a_kernel_full_of_compression_magics_is_read_once() -> None:
    """10 MB of xz and gzip magics, no header: looked at in one place (none here), not
    tried at every magic (which took hours)."""
    magics = (b"\xfd7zXZ\x00" + b"\x1f\x8b\x08") * ((10 << 20) // 9)
    assert extract_vmlinux(magics) is None
    assert extract_vmlinux(bzimage(magics[:1 << 20])) is None


def test_crafted_elf_notes_are_no_note_not_a_crash() -> None:
    elf = bytearray(elf_with_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY))
    for field, value, fmt in ((32, 1 << 40, "<Q"),  # e_phoff past the end
                              (54 + 2, 0xFFFF, "<H"),  # e_phnum: 65535 headers
                              (64 + 8, 1 << 40, "<Q"),  # the note's offset past the end
                              (64 + 32, 1 << 40, "<Q")):  # the note's size past the end
        crafted = bytearray(elf)
        struct.pack_into(fmt, crafted, field, value)
        assert has_pvh_entry(bytes(crafted)) in (True, False)
    assert not has_pvh_entry(bytes(elf[:70]))


def test_no_elf_no_image() -> None:
    assert extract_vmlinux(b"\x00" * 4096) is None
