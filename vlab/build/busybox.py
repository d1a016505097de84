"""Debian's static busybox: the one binary both the initrd and the tiny root are made of."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from vlab import run
from vlab.errors import MissingTool

BUSYBOX = Path("/bin/busybox")
PACKAGE = "busybox-static"


def binary() -> Path:
    if not BUSYBOX.is_file() or not _is_static(BUSYBOX):
        raise MissingTool(f"a static busybox ({BUSYBOX} from {PACKAGE})", PACKAGE)
    return BUSYBOX


def _is_static(path: Path) -> bool:
    """An ELF file without a PT_INTERP program header needs no dynamic loader."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(int.from_bytes(table[i:i + 4], "little") != pt_interp
               for i in range(0, len(table), phentsize))


@cache
def applets() -> tuple[str, ...]:
    """Applet paths relative to /, e.g. 'bin/sh', 'sbin/insmod'."""
    out = run.output([str(binary()), "--list-full"])
    return tuple(sorted(line.strip() for line in out.splitlines() if line.strip()))
