"""UEFI HTTP boot's RAM disk image: what a host with netboot = "http" loads.

Debian's signed network GRUB has no `http` module, and under Secure Boot GRUB loads none, so
a host that fetched shim and GRUB over HTTP could read neither its configuration nor its
kernel. The firmware itself can: given the URL of a disk image (a name ending in .img),
UEFI HTTP boot loads it into a RAM disk and starts its removable-media loader
(EFI/BOOT/BOOTX64.EFI). vlab's image is a FAT file system holding Debian's signed shim there,
Debian's signed GRUB beside it (the monolithic image, which reads its grub.cfg from the disk it
came from), the host's grub.cfg, the kernel and the initrd: every byte crosses the network
once, over HTTP, and Secure Boot checks shim, GRUB and the kernel as on a disk. Built with
dosfstools and mtools (no mount), cached by everything it holds."""

from __future__ import annotations

from pathlib import Path

from vlab import run
from vlab.build import cache, efi
from vlab.errors import MissingTool

# Debian's signed monolithic GRUB: it reads grub.cfg from its prefix on the disk it was
# loaded from (efi.grub_prefix reads which).
GRUB = (Path("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"), "grub-efi-amd64-signed")
REMOVABLE = "EFI/BOOT"  # the removable-media loader's folder: BOOTX64.EFI, and what it loads
SLACK = 2 << 20  # a FAT file system's own tables and clusters, beyond its files
TOOLS = {"mkfs.vfat": "dosfstools", "mcopy": "mtools", "mmd": "mtools"}


def image(cache_dir: Path, grub_cfg: str, kernel: Path, initrd: Path) -> Path:
    """The image for one host's GRUB configuration, built once per distinct contents."""
    for tool, package in TOOLS.items():
        if run.which(tool) is None:
            raise MissingTool(tool, package)
    shim = efi.LOADERS[efi.SHIM][0]
    for path, package in ((shim, efi.LOADERS[efi.SHIM][1]), GRUB):
        if not path.is_file():
            raise MissingTool(str(path), package)
    grub_dir = efi.grub_prefix(GRUB[0].read_bytes(), str(GRUB[0]))
    files = {f"{REMOVABLE}/BOOTX64.EFI": shim, f"{REMOVABLE}/{efi.GRUB}": GRUB[0],
             "vmlinuz": kernel, "initrd.img": initrd}
    final = cache_dir / "httpboot" / (cache.key(
        grub_dir, grub_cfg, *(f"{name}={cache.file_digest(p)}" for name, p in files.items()))
        + ".img")
    if final.is_file():
        return final
    size = sum(p.stat().st_size for p in files.values()) + len(grub_cfg) + SLACK
    with cache.scratch(cache_dir / "httpboot") as work, cache.publish(final) as tmp:
        cfg = work / "grub.cfg"
        cfg.write_text(grub_cfg)
        run.run(["mkfs.vfat", "-n", "VLABBOOT", "-C", str(tmp), str(-(-size // 1024))])
        mtools = {"MTOOLS_SKIP_CHECK": "1"}
        folders = sorted({f"::/{'/'.join(rel.split('/')[:i])}"
                          for rel in [*files, f"{grub_dir}/grub.cfg"]
                          for i in range(1, rel.count("/") + 1)})
        run.run(["mmd", "-i", str(tmp), *folders], env=mtools)
        for rel, src in [*files.items(), (f"{grub_dir}/grub.cfg", cfg)]:
            run.run(["mcopy", "-i", str(tmp), str(src), f"::/{rel}"], env=mtools)
        tmp.chmod(0o644)
    return final
