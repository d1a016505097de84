"""The NFS root: vlab's busybox terminal or a Debian root built into the cache, a disk image
mounted read-only, or a directory as it is; exported read-only."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from vlab import busybox, cache, mounts, render, run
from vlab.errors import MissingTool

Say = Callable[[str], None]

DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "tmp", "run",
        "root", "var/tmp", "var/lock", "var/log")
ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/hostname": "terminal\n",
    "etc/profile": 'export PATH=/bin:/sbin:/usr/bin:/usr/sbin\nPS1="vlab-terminal:\\w# "\n',
}


def build_busybox(export_path: Path) -> Path:
    """Build (or reuse) the tiny root at export_path; its stamp records what went in."""
    bb = busybox.binary()
    init = render.root_init()
    inputs = cache.key(cache.file_digest(bb), init, repr(sorted(ETC.items())), repr(DIRS))
    if cache.is_current(export_path, inputs):
        return export_path
    with cache.publish(export_path) as tmp:
        for d in DIRS:
            (tmp / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(bb, tmp / "bin/busybox")
        for applet in busybox.applets():
            if applet not in ("bin/busybox", "sbin/init"):
                (tmp / applet).symlink_to("/bin/busybox")
        (tmp / "sbin/init").write_text(init)
        (tmp / "sbin/init").chmod(0o755)
        for name, text in ETC.items():
            (tmp / name).write_text(text)
        for d in ("tmp", "var/tmp", "var/lock"):
            (tmp / d).chmod(0o1777)
        tmp.chmod(0o755)
        cache.stamp(tmp, inputs)
    return export_path


def build_debian(export_path: Path, suite: str, packages: tuple[str, ...], say: Say) -> Path:
    """Bootstrap a Debian root with mmdebstrap, once per suite and package set."""
    inputs = cache.key(suite, *packages)
    if cache.is_current(export_path, inputs):
        return export_path
    if run.which("mmdebstrap") is None:
        raise MissingTool("mmdebstrap (for source = \"debian\")", "mmdebstrap")
    say(f"bootstrapping Debian {suite} with {len(packages)} packages (about a minute, once)")
    with cache.publish(export_path) as tmp:
        # No mirror named: mmdebstrap takes Debian's and, for a stable suite, adds
        # updates and security itself, so the kernel matches what apt sees here.
        # INITRD=No: the kernel's postinst hooks build no initrd while installing (vlab
        # builds its own, with its own config); dracut's would even fail half-installed.
        run.run(["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}",
                 suite, str(tmp)], env={"INITRD": "No"}, timeout=1800,
                hint="mmdebstrap needs Debian's archive; see its message above")
        tmp.chmod(0o755)
        cache.stamp(tmp, inputs)
    return export_path


def mount_image(image: Path, mountpoint: Path) -> None:
    """Attach the image read-only and mount it read-only where the lab exports it.
    It stays mounted while the lab runs; release_image() undoes it."""
    if mounts.is_mounted(mountpoint):
        return
    mountpoint.mkdir(parents=True, exist_ok=True)
    with mounts.MountStack() as stack:
        # One step: mount(8) attaches a read-only loop device with autoclear, so the loop
        # device goes with the unmount and no kill between two steps can orphan it.
        stack.mount(str(image), mountpoint, options="loop,ro")
        stack.keep()


def release_image(image: Path, mountpoint: Path) -> list[str]:
    """Unmount the lab's image and detach every loop device backed by it."""
    done = []
    if mounts.is_mounted(mountpoint):
        mounts.umount(mountpoint)
        done.append(f"unmounted {mountpoint}")
    for dev in mounts.loops_of(image):
        mounts.detach(dev)
        done.append(f"detached {dev}")
    if mountpoint.is_dir():
        mountpoint.rmdir()
    return done
