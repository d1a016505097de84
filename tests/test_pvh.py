"""The PVH kernel image: found inside a bzImage, and recognised by its ELF note."""

from __future__ import annotations

import gzip
import lzma
import struct

from vlab.pvh import XEN_ELFNOTE_PHYS32_ENTRY, extract_vmlinux, has_pvh_entry


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


def test_elf_is_found_inside_an_xz_or_gzip_bzimage() -> None:
    elf = elf_with_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY)
    setup = b"\x00" * 512 + b"HdrS" + b"\xfd7zXZ\x00 not really" + b"\x00" * 100
    for packed in (lzma.compress(elf, format=lzma.FORMAT_XZ), gzip.compress(elf)):
        assert extract_vmlinux(setup + packed + b"\x00\x10\x00\x00") == elf


def test_no_elf_no_image() -> None:
    assert extract_vmlinux(b"\x00" * 4096) is None
