"""The TFTP tree on disk: written atomically, only what changed, and nothing vlab wrote
before is left behind when its host leaves the scenario."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlab.build import cache
from vlab.errors import HostError, MissingTool, UsageError
from vlab.scenario.model import Firmware

MANIFEST = ".vlab-manifest.json"
MANIFEST_MAX = 256 << 20  # a 10,000-host tree's manifest is ~4 MiB
SYSLINUX = {
    "pxelinux.0": (Path("/usr/lib/PXELINUX/pxelinux.0"), "pxelinux"),
    "ldlinux.c32": (Path("/usr/lib/syslinux/modules/bios/ldlinux.c32"), "syslinux-common"),
}

# iPXE, for hosts with netboot = "ipxe": the firmware loads it over TFTP (by its own PXE: the
# UNDI build for BIOS, the SNP one for UEFI), and iPXE fetches the rest over HTTP.
IPXE = {
    Firmware.BIOS: ("undionly.kpxe", Path("/usr/lib/ipxe/undionly.kpxe")),
    Firmware.UEFI: ("snponly.efi", Path("/usr/lib/ipxe/snponly.efi")),
    Firmware.UEFI_SECURE: ("snponly.efi", Path("/usr/lib/ipxe/snponly.efi")),
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


def ipxe_loaders(firmwares: set[Firmware]) -> dict[str, Path]:
    """iPXE's loaders for hosts of these firmwares, from Debian's ipxe package."""
    found = {}
    for firmware in firmwares:
        name, path = IPXE[firmware]
        if not path.is_file():
            raise MissingTool(f"iPXE ({path})", "ipxe")
        found[name] = path
    return found


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(folder_fd: int, name: str, data: bytes, exists: bool) -> None:
    """Write name in the open folder so that it appears whole, never through a link: the
    data goes into an unnamed file (O_TMPFILE), which then gets its name (linkat, which
    fails rather than replace anything); a file vlab wrote before is replaced by rename
    from a temporary name. (os calls, not pathlib: this runs 40,000 times for 10,000 hosts.)"""
    try:
        # Mode 0644: dnsmasq's TFTP server runs unprivileged.
        fd = os.open(".", os.O_WRONLY | os.O_TMPFILE, 0o644, dir_fd=folder_fd)
    except OSError as err:  # a file system without unnamed files (NFS): a named one
        if err.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
            raise
        _write_through_rename(folder_fd, name, data)
        return
    tmp = f".{name}.vlab-tmp"
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o644)
        unnamed = f"/proc/self/fd/{fd}"
        if not exists:
            os.link(unnamed, name, dst_dir_fd=folder_fd, follow_symlinks=True)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder_fd)
        os.link(unnamed, tmp, dst_dir_fd=folder_fd, follow_symlinks=True)
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)


def _write_through_rename(folder_fd: int, name: str, data: bytes) -> None:
    tmp = f".{name}.vlab-tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=folder_fd)
    # O_EXCL: a planted symlink at the temporary name is not followed.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                 dir_fd=folder_fd)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)


# A path a manifest may name: relative, plain parts (no "", ".", ".."), no control characters.
_PART = r"(?!\.\.?(?:/|$))[^\x00-\x1f\x7f/]+"
SAFE_REL_RE = re.compile(rf"{_PART}(?:/{_PART})*")


def _safe_rel(rel: object) -> bool:
    return isinstance(rel, str) and SAFE_REL_RE.fullmatch(rel) is not None


def _load_manifest(root: Path) -> tuple[dict[str, str], dict[str, list[Any]]]:
    path = root / MANIFEST
    if not os.path.lexists(path):
        return {}, {}
    fix = (f"if vlab did not write {path}, move it away; else remove it, and vlab treats every "
           "file in the tree as not its own")
    try:
        try:  # never through a symlink, never a FIFO (which would hang), bounded
            text = cache.read_regular(path, MANIFEST_MAX, "the manifest")
        except HostError as err:
            raise ValueError(str(err)) from None
        loaded = json.loads(text)
        files, groups = loaded["files"], loaded["groups"]
        if not (isinstance(files, dict) and isinstance(groups, dict)):
            raise ValueError("files and groups must be objects")
        for rel, digest in files.items():
            if not _safe_rel(rel) or not isinstance(digest, str):
                raise ValueError(f"it names {rel!r}")
        for entry in groups.values():
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list)
                    and all(_safe_rel(r) for r in entry[1])):
                raise ValueError(f"a group entry is {entry!r}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path} is not a manifest vlab can trust ({err}); fix: {fix}") from None
    return files, groups


def _file_digest(path: Path) -> str | None:
    """The digest of a regular file at path, not through a link; None if it is anything else."""
    try:
        with cache.open_regular(path, "a file of the TFTP tree") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except HostError:
        return None


class _Folders:
    """Folders of the tree, opened without following links; only the ones vlab makes get
    vlab's mode (an operator's 2775 or 0750 stays as it is)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: dict[str, int] = {}

    def open(self, rel_dir: str) -> int:
        if rel_dir in self.fds:
            return self.fds[rel_dir]
        if rel_dir == "":
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        else:
            parent_rel, _, name = rel_dir.rpartition("/")
            parent = self.open(parent_rel)
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
                made = True
            except FileExistsError:
                made = False
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            except OSError:
                raise UsageError(f"{self.root / rel_dir} is not a folder (a link or a file "
                                 "there is not vlab's to follow or replace); fix: move it "
                                 "away, or give vlab another --tftp-dir") from None
            if made:
                os.fchmod(fd, 0o755)
        self.fds[rel_dir] = fd
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


Group = tuple[str, Callable[[], dict[str, str]]]


def write_tree(root: Path, texts: dict[str, str], copies: dict[str, Path],
               groups: dict[str, Group] | None = None) -> Changes:
    """Make root hold exactly these files (and whatever vlab never wrote, untouched).

    A file vlab did not write (not in its manifest, or changed since) is never replaced:
    vlab names it and writes nothing. A group (one host's files) comes with a key of all
    its inputs: when the manifest holds the same key, its files are taken as written and
    not even rendered."""
    if not root.exists():
        root.mkdir(parents=True)
        root.chmod(0o755)
    old_files, old_groups = _load_manifest(root)
    new_files: dict[str, str] = {}
    new_groups: dict[str, list[Any]] = {}
    pending: dict[str, bytes] = {}
    changes = Changes()

    def put(rel: str, data: bytes) -> None:
        digest = _digest(data)
        new_files[rel] = digest
        if old_files.get(rel) == digest and os.path.isfile(root / rel):  # as vlab wrote it
            changes.unchanged += 1
            return
        pending[rel] = data

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
    # Check everything before writing anything: a file there that vlab did not write, or
    # that changed since vlab wrote it, is the operator's.
    there = {rel for rel in pending if os.path.lexists(root / rel)}
    theirs = [rel for rel in sorted(there)
              if rel not in old_files or _file_digest(root / rel) != old_files[rel]]
    if theirs:
        shown = ", ".join(str(root / r) for r in theirs[:5])
        more = f" and {len(theirs) - 5} more" if len(theirs) > 5 else ""
        raise UsageError(f"{shown}{more}: vlab did not write (or someone changed since); "
                         "vlab replaces only its own files and wrote nothing; fix: move them "
                         "away if vlab's may replace them, or give vlab a --tftp-dir of its own")
    folders = _Folders(root)
    try:
        for rel, data in pending.items():
            parent, _, name = rel.rpartition("/")
            try:
                _write_atomically(folders.open(parent), name, data, rel in there)
            except FileExistsError:
                raise UsageError(f"{root / rel} appeared while vlab wrote the tree (vlab did "
                                 "not write it and does not replace it); fix: move it away "
                                 "and run again") from None
            changes.written.append(rel)
        for rel in sorted(set(old_files) - set(new_files)):
            # Only a file still as vlab wrote it; one someone changed since is theirs now.
            if _file_digest(root / rel) == old_files[rel]:
                parent, _, name = rel.rpartition("/")
                os.unlink(name, dir_fd=folders.open(parent))
                changes.removed.append(rel)
        manifest = {"files": new_files, "groups": new_groups}
        _write_atomically(folders.open(""), MANIFEST,
                          json.dumps(manifest, separators=(",", ":")).encode(),
                          os.path.lexists(root / MANIFEST))
    finally:
        folders.close()
    return changes
