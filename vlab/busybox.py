"""Debian's static busybox: the one binary both the initrd and the tiny root are made of."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from vlab import run
from vlab.errors import MissingTool

BUSYBOX = Path("/bin/busybox")
PACKAGE = "busybox-static"


def binary() -> Path:
    status = run.run(["dpkg-query", "-W", "-f=${Status}", PACKAGE], check=False).stdout
    if not BUSYBOX.is_file() or "install ok installed" not in status:
        raise MissingTool(f"a static busybox ({BUSYBOX} from {PACKAGE})", PACKAGE)
    return BUSYBOX


@cache
def applets() -> tuple[str, ...]:
    """Applet paths relative to /, e.g. 'bin/sh', 'sbin/insmod'."""
    out = run.output([str(binary()), "--list-full"])
    return tuple(sorted(line.strip() for line in out.splitlines() if line.strip()))
