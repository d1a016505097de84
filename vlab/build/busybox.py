"""Debian's static busybox: the one binary both the initrd and the tiny root are made of. The
machine's own for x86 terminals; for arm64 ones Debian's arm64 build of the same package,
fetched with apt into the cache (never run here)."""

from __future__ import annotations

import shutil
from functools import cache as remembered
from pathlib import Path

from vlab import run
from vlab.build import apt, cache
from vlab.errors import HostError, MissingTool
from vlab.scenario.model import Arch

BUSYBOX = Path("/bin/busybox")
PACKAGE = "busybox-static"
ELF_MACHINE = {Arch.AMD64: 62, Arch.ARM64: 183}  # EM_X86_64, EM_AARCH64


def binary(arch: Arch = Arch.AMD64, cache_dir: Path | None = None) -> Path:
    """The static busybox for terminals of `arch` (an arm64 one needs the cache folder)."""
    if arch is Arch.AMD64:
        if not BUSYBOX.is_file() or not _is_static(BUSYBOX, arch):
            raise MissingTool(f"a static busybox ({BUSYBOX} from {PACKAGE})", PACKAGE)
        return BUSYBOX
    assert cache_dir is not None
    name, version = apt.resolve_cached(apt.name(PACKAGE, arch), cache_dir)
    final = cache_dir / "busybox" / f"{version.replace(':', '_')}_{arch.value}"
    if not (final / "busybox").is_file():
        with cache.publish(final) as tmp:
            tmp.mkdir()
            unpacked = apt.download(name, version, tmp)
            (unpacked / "bin" / "busybox").rename(tmp / "busybox")
            shutil.rmtree(unpacked)
            (tmp / "busybox").chmod(0o755)
            tmp.chmod(0o755)
    if not _is_static(final / "busybox", arch):
        raise HostError(f"{final / 'busybox'} is not a static {arch.value} busybox; fix: "
                        f"remove {final} (vlab fetches it again)")
    return final / "busybox"


def _is_static(path: Path, arch: Arch) -> bool:
    """A 64-bit ELF file of the architecture without a PT_INTERP program header (it needs
    no dynamic loader)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        if int.from_bytes(head[18:20], "little") != ELF_MACHINE[arch]:
            return False
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(int.from_bytes(table[i:i + 4], "little") != pt_interp
               for i in range(0, len(table), phentsize))


@remembered
def applets() -> tuple[str, ...]:
    """Applet paths relative to /, e.g. 'bin/sh', 'sbin/insmod': the machine's own busybox's
    list, which is the arm64 build's too (one Debian source package, one configuration; an
    arm64 binary cannot run here to say so itself)."""
    out = run.output([str(binary()), "--list-full"])
    return tuple(sorted(line.strip() for line in out.splitlines() if line.strip()))
