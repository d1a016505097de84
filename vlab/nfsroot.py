"""The NFS root: vlab's busybox terminal, built into the cache and exported read-only."""

from __future__ import annotations

import shutil
from pathlib import Path

from vlab import busybox, cache, render

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
