"""Disk images made the way image builders make them: each filesystem made from a folder
(mkfs.ext4 -d; a vfat one with mkfs.vfat and mtools' mcopy), a partition table written by
sfdisk, the filesystems copied in at their partitions' offsets; the same disk as qcow2."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
XBOOTLDR = "BC13C2FF-59E6-4262-A352-B275FD6F7172"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


@dataclass(frozen=True)
class Part:
    type: str  # a GPT type GUID, or an MBR type in hex ("83")
    size_mib: int
    fs: str | None = None  # "ext4", "vfat" or None (left empty)
    tree: Path | None = None  # what the filesystem holds
    label: str = ""  # the GPT partition name
    fslabel: str = ""


def size_mib(tree: Path) -> int:
    """A filesystem size that holds the tree with room to spare (1.5x, plus 256 MiB)."""
    used = sum(p.lstat().st_size for p in tree.rglob("*") if not p.is_symlink())
    return used * 3 // 2 // MiB + 256


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _filesystem(part: Part, out: Path) -> None:
    if part.fs == "vfat":
        subprocess.run(["mkfs.vfat", "-C", str(out), str(part.size_mib * 1024)]
                       + (["-n", part.fslabel] if part.fslabel else []),
                       check=True, capture_output=True)
        if part.tree is not None and any(part.tree.iterdir()):  # as image builders fill it
            subprocess.run(["mcopy", "-s", "-i", str(out),
                            *map(str, sorted(part.tree.iterdir())), "::/"], check=True,
                           env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
    else:
        subprocess.run(["mkfs.ext4", "-q", "-F", *(["-d", str(part.tree)] if part.tree else []),
                        *(["-L", part.fslabel] if part.fslabel else []), str(out),
                        f"{part.size_mib}M"], check=True)


def disk(out: Path, table: str, parts: list[Part]) -> Path:
    """A raw disk image with a "gpt" or "dos" partition table; partitions start at 1 MiB."""
    total = 2 + sum(p.size_mib for p in parts)  # 1 MiB before, room for GPT's backup after
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate(total * MiB)
    lines, start = [f"label: {table}"], 1
    for p in parts:
        name = f', name="{p.label}"' if p.label and table == "gpt" else ""
        lines.append(f"start={start * 2048}, size={p.size_mib * 2048}, type={p.type}{name}")
        start += p.size_mib
    subprocess.run(["sfdisk", "-q", str(out)], input="\n".join(lines) + "\n", text=True,
                   check=True, capture_output=True)
    start = 1
    for p in parts:
        if p.fs:
            fs = out.with_name(out.name + ".part")
            fs.unlink(missing_ok=True)
            _filesystem(p, fs)
            subprocess.run(["dd", f"if={fs}", f"of={out}", "bs=1M", f"seek={start}",
                            "conv=notrunc,sparse", "status=none"], check=True)
            fs.unlink()
        start += p.size_mib
    return out


def qcow2(raw: Path, out: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)],
                   check=True)
    return out
