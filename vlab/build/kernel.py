"""The guest kernel: Debian's linux-image package fetched with apt, or the one installed in
the root itself (as the page boots its image's own kernel), copied into the cache."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from vlab import run
from vlab.build import apt, cache, mounts, pvh
from vlab.errors import HostError, ScenarioError
from vlab.scenario.model import Arch


@dataclass(frozen=True)
class Kernel:
    """A kernel vlab can boot: its bzImage, the PVH ELF if any, and its modules."""

    release: str
    vmlinuz: Path
    modules: Path

    @property
    def vmlinux(self) -> Path:
        return self.vmlinuz.with_name("vmlinux")

    @property
    def boot_image(self) -> Path:
        """What direct kernel boot starts: the PVH ELF where there is one, else the bzImage."""
        return self.vmlinux if self.vmlinux.exists() else self.vmlinuz

    @property
    def key(self) -> str:
        return str(self.vmlinuz.parent)


MAX_KERNEL = 256 << 20  # a root's bzImage (Debian's: ~8 MiB)

def fetch(package: str, cache_dir: Path, arch: Arch = Arch.AMD64) -> Kernel:
    """Download and unpack the kernel package once; later calls reuse the cache."""
    name, version = apt.resolve_cached(apt.name(package, arch), cache_dir, follow="linux-image-")
    final = cache_dir / "kernels" / f"{name.replace(':', '_')}_{version}"
    if (final / "release").is_file():
        release = (final / "release").read_text().strip()
        return Kernel(release, final / "vmlinuz", final / "lib" / "modules" / release)
    with cache.publish(final) as tmp:
        tmp.mkdir()
        unpacked = apt.download(name, version, tmp)
        vmlinuz = next(unpacked.glob("boot/vmlinuz-*"))
        release = vmlinuz.name.removeprefix("vmlinuz-")
        shutil.copy2(vmlinuz, tmp / "vmlinuz")
        (tmp / "lib").mkdir()
        # Debian's .deb ships no modules.dep: build it for the tree as unpacked (depmod
        # reads an arm64 kernel's modules as well as an x86 one's).
        shutil.move(unpacked / "lib" / "modules", tmp / "lib" / "modules")
        run.run(["depmod", "-b", str(tmp), release])
        shutil.rmtree(unpacked)
        if arch is Arch.AMD64:
            _write_pvh_image(tmp)
        (tmp / "release").write_text(release + "\n")
        for p in [tmp, *tmp.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    return Kernel(release, final / "vmlinuz", final / "lib" / "modules" / release)


def releases_in(boot: Path | None) -> list[str]:
    """Kernel releases installed in a root's /boot (mounts.inside: None if it has none),
    oldest first."""
    if boot is None or not boot.is_dir():
        return []
    return sorted((p.name.removeprefix("vmlinuz-") for p in boot.glob("vmlinuz-*")),
                  key=_version_key)


def _version_key(release: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.-]", release)]


def from_root(root: Path, wanted: str | None, cache_dir: Path, scenario: Path) -> Kernel:
    """The root's own kernel (the newest, or the release the scenario names), copied out of
    the root into the cache like the page's `mv nfs-export/tmp/initrd.img .`, readable by QEMU.
    Its modules stay in the root: the builders read them there."""
    boot = mounts.inside(root, "boot")
    available = releases_in(boot)
    if boot is None or not available:
        raise ScenarioError(scenario, "kernel.source", f'"root" but {root} has no /boot/vmlinuz-*',
                            'install a kernel in the root, or use source = "debian"')
    release = wanted or available[-1]
    if release not in available:
        raise ScenarioError(scenario, "kernel.version", f"{release!r} is not installed in {root}",
                            f"use one of {', '.join(available)}")
    modules = mounts.inside(root, f"lib/modules/{release}")
    if modules is None or not (modules / "modules.dep").is_file():
        raise ScenarioError(scenario, "kernel.version", f"{root} has no modules.dep for {release}",
                            f"run depmod {release} in the root")
    with cache.scratch(cache_dir / "kernels") as scratch:
        # Copied once, never through a link, then digested: a FIFO or a device cannot
        # hang vlab or land in the cache (the root is untrusted).
        try:
            cache.copy_regular(Path(f"vmlinuz-{release}"), scratch / "vmlinuz",
                               what="the root's kernel", limit=MAX_KERNEL, within=boot)
        except HostError as err:
            raise ScenarioError(scenario, "kernel.version", f"{release}: {err.message()}",
                                "a root's kernel must be a regular file in its /boot, not "
                                "a link") from None
        digest = cache.file_digest(scratch / "vmlinuz")
        final = cache_dir / "kernels" / f"root-{release}-{digest[:16]}"
        if not (final / "vmlinuz").exists():
            with cache.publish(final) as tmp:
                tmp.mkdir()
                shutil.copyfile(scratch / "vmlinuz", tmp / "vmlinuz")
                _write_pvh_image(tmp)
                for p in [tmp, *tmp.iterdir()]:
                    p.chmod(0o755 if p.is_dir() else 0o644)
    return Kernel(release, final / "vmlinuz", modules)


def _write_pvh_image(folder: Path) -> None:
    """Keep the uncompressed ELF beside the bzImage when QEMU can boot it through PVH."""
    elf = pvh.extract_vmlinux((folder / "vmlinuz").read_bytes())
    if elf is not None and pvh.has_pvh_entry(elf):
        (folder / "vmlinux").write_bytes(elf)
