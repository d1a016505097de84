"""A minimal, reproducible writer and reader for the newc cpio format the kernel unpacks."""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass, field

TRAILER = "TRAILER!!!"


@dataclass
class Archive:
    """Entries in the order the kernel will create them (parents before children)."""

    # (name, mode, data, rdev)
    entries: list[tuple[str, int, bytes, int]] = field(default_factory=list)

    def dir(self, name: str, mode: int = 0o755) -> None:
        self.entries.append((name, stat.S_IFDIR | mode, b"", 0))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.entries.append((name, stat.S_IFREG | mode, data, 0))

    def symlink(self, name: str, target: str) -> None:
        self.entries.append((name, stat.S_IFLNK | 0o777, target.encode(), 0))

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.entries.append((name, stat.S_IFCHR | mode, b"", (major << 8) | minor))

    def to_bytes(self) -> bytes:
        out = bytearray()
        for ino, (name, mode, data, rdev) in enumerate(
            [*self.entries, (TRAILER, 0, b"", 0)], start=1
        ):
            raw_name = name.encode() + b"\0"
            fields = [
                ino if name != TRAILER else 0, mode, 0, 0,
                2 if stat.S_ISDIR(mode) else 1, 0, len(data),
                0, 0, rdev >> 8, rdev & 0xFF, len(raw_name), 0,
            ]
            out += b"070701" + "".join(f"{v:08x}" for v in fields).encode()
            out += raw_name
            out += b"\0" * (-len(out) % 4)
            out += data
            out += b"\0" * (-len(out) % 4)
        return bytes(out)

    def gzipped(self) -> bytes:
        return gzip.compress(self.to_bytes(), compresslevel=6, mtime=0)


def read_names(blob: bytes) -> list[str]:
    """Names of the entries of a (possibly gzip'd) newc archive."""
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    names, pos = [], 0
    while pos < len(blob):
        header = blob[pos:pos + 110]
        if header[:6] != b"070701":
            raise ValueError(f"not a newc cpio header at offset {pos}")
        size, namesize = int(header[54:62], 16), int(header[94:102], 16)
        name = blob[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)
        if name == TRAILER:
            break
        names.append(name)
    return names
