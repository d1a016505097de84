"""The TFTP tree on disk: written atomically, only what changed, and nothing vlab wrote
before is left behind when its host leaves the scenario."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


Group = tuple[str, Callable[[], dict[str, str]]]


def write_tree(root: Path, texts: dict[str, str], copies: dict[str, Path],
               groups: dict[str, Group] | None = None) -> Changes:
    """Make root hold exactly these files (and whatever vlab never wrote, untouched).

    A group (one host's files) comes with a key of all its inputs: when the manifest holds
    the same key, its files are taken as written and not even rendered."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    manifest_path = root / MANIFEST
    try:
        loaded = json.loads(manifest_path.read_text())
        old_files: dict[str, str] = loaded["files"]
        old_groups: dict[str, list[Any]] = loaded["groups"]
    except (OSError, ValueError, KeyError, TypeError):
        old_files, old_groups = {}, {}
    new_files: dict[str, str] = {}
    new_groups: dict[str, list[Any]] = {}
    changes = Changes()
    made_dirs: set[Path] = set()

    def put(rel: str, data: bytes) -> None:
        digest = _digest(data)
        new_files[rel] = digest
        path = root / rel
        if old_files.get(rel) == digest and os.path.isfile(path):  # as vlab wrote it before
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
    for name, (key, render_group) in (groups or {}).items():
        old = old_groups.get(name)
        if old and old[0] == key and all(rel in old_files for rel in old[1]):
            for rel in old[1]:
                new_files[rel] = old_files[rel]
            changes.unchanged += len(old[1])
            new_groups[name] = old
            continue
        rendered = render_group()
        for rel, text in rendered.items():
            put(rel, text.encode())
        new_groups[name] = [key, sorted(rendered)]
    for rel in sorted(set(old_files) - set(new_files)):
        (root / rel).unlink(missing_ok=True)
        changes.removed.append(rel)
    manifest = {"files": new_files, "groups": new_groups}
    _write_atomically(manifest_path, json.dumps(manifest, separators=(",", ":")).encode())
    return changes
