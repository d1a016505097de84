"""The TFTP tree on disk: written atomically, only what changed, and nothing vlab wrote
before is left behind when its host leaves the scenario."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vlab.errors import MissingTool

MANIFEST = ".vlab-manifest.json"
SYSLINUX = {
    "pxelinux.0": (Path("/usr/lib/PXELINUX/pxelinux.0"), "pxelinux"),
    "ldlinux.c32": (Path("/usr/lib/syslinux/modules/bios/ldlinux.c32"), "syslinux-common"),
}


@dataclass
class Changes:
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0


def bootloaders() -> dict[str, Path]:
    """pxelinux.0 and ldlinux.c32 from the installed syslinux packages."""
    for name, (path, package) in SYSLINUX.items():
        if not path.is_file():
            raise MissingTool(f"{name} ({path})", package)
    return {name: path for name, (path, _package) in SYSLINUX.items()}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = f"{path.parent}/.{path.name}.vlab-tmp"
    # Mode 0644 at creation: dnsmasq's TFTP server runs unprivileged. (os calls, not
    # pathlib: this runs 40,000 times for 10,000 hosts.)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_tree(root: Path, texts: dict[str, str], copies: dict[str, Path]) -> Changes:
    """Make root hold exactly these files (and whatever vlab never wrote, untouched)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    manifest_path = root / MANIFEST
    try:
        old: dict[str, str] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        old = {}
    new: dict[str, str] = {}
    changes = Changes()
    made_dirs: set[Path] = set()

    def put(rel: str, data: bytes) -> None:
        digest = _digest(data)
        new[rel] = digest
        path = root / rel
        if old.get(rel) == digest and os.path.isfile(path):  # as vlab wrote it before
            changes.unchanged += 1
            return
        if path.parent not in made_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(0o755)
            made_dirs.add(path.parent)
        _write_atomically(path, data)
        changes.written.append(rel)

    for rel, src in copies.items():
        put(rel, src.read_bytes())
    for rel, text in texts.items():
        put(rel, text.encode())
    for rel in sorted(set(old) - set(new)):
        (root / rel).unlink(missing_ok=True)
        changes.removed.append(rel)
    _write_atomically(manifest_path, json.dumps(new, indent=0, sort_keys=True).encode())
    return changes
