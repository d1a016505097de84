"""The artifact cache: content-addressed keys and atomic publication of built things."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vlab import procs
from vlab.build import mounts
from vlab.errors import HostError

STAMP = ".vlab-inputs"


def key(*parts: str | bytes) -> str:
    """A short digest of everything that goes into an artifact."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:20]


def file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def publish(final: Path) -> Iterator[Path]:
    """Build into a temporary sibling, then rename it into place; nothing half-built is left."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if _same_inputs(final, tmp):
        # Another vlab (a lab coming up side by side) built the same root and published it
        # first; it may already be in use (an export image made from it, a builder's
        # sandbox over it): it stays, this one goes.
        _remove(tmp)
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    try:
        tmp.rename(final)
    except OSError as err:
        # Another vlab (a lab coming up side by side) published the same key in between:
        # its result is as good as this one (a key names what it is made from).
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
            raise
        _remove(tmp)
    _remove(old)


def _same_inputs(final: Path, tmp: Path) -> bool:
    """final is a folder stamped with the inputs tmp was built from (stamp())."""
    made = tmp / STAMP
    return made.is_file() and is_current(final, made.read_text())


@contextmanager
def scratch(parent: Path) -> Iterator[Path]:
    """A private folder for one build, removed after it (a killed vlab's is swept)."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = parent / f".scratch.tmp-{os.getpid()}"
    _remove(folder)
    folder.mkdir(mode=0o700)
    try:
        yield folder
    finally:
        _remove(folder)


def _shown(src: Path, within: Path | None) -> Path:
    return src if within is None else within / src


@contextmanager
def open_regular(src: Path, what: str, *, follow: bool = False,
                 within: Path | None = None) -> Iterator[io.BufferedReader]:
    """src open for reading, only if it is a regular file, never blocking (src is untrusted:
    a FIFO or a device is refused) and, unless `follow` (a path the scenario's author
    gave), never through a symlink as its last part. With `within`, src is relative to that
    folder of an untrusted tree and resolved by the kernel strictly under it
    (mounts.open_in): a link on the way that leads out is refused, not followed."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    shown = _shown(src, within)
    try:
        fd = os.open(src, flags) if within is None else mounts.open_in(
            within, str(src), flags, beneath=True)
    except OSError as err:
        why = ("a symlink" if err.errno == errno.ELOOP and not follow
               else f"it leads out of {within}" if err.errno == errno.EXDEV else err.strerror)
        raise HostError(f"{what} ({shown}) cannot be read: {why}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise HostError(f"{what} ({shown}) is not a regular file; vlab reads regular "
                            "files only")
        yield f


def read_regular(src: Path, limit: int, what: str, *, follow: bool = False,
                 within: Path | None = None) -> bytes:
    """All of src (open_regular), if it is at most `limit` bytes: never more in memory (a
    root's modules.dep linked to /dev/zero is refused before; a huge one here)."""
    with open_regular(src, what, follow=follow, within=within) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise HostError(f"{what} ({_shown(src, within)}) is larger than {limit >> 20} MiB; "
                        "vlab reads no more of it")
    return data


def copy_regular(src: Path, dst: Path, what: str, limit: int | None = None, *,
                 within: Path | None = None) -> None:
    """Copy src only if it is a regular file (open_regular) of at most `limit` bytes."""
    with open_regular(src, what, within=within) as f:
        if limit is not None and os.fstat(f.fileno()).st_size > limit:
            raise HostError(f"{what} ({_shown(src, within)}) is larger than {limit >> 20} "
                            "MiB; vlab copies no more of an untrusted tree")
        with dst.open("wb") as out:
            shutil.copyfileobj(f, out)


LEFTOVER_RE = re.compile(r"^\..+\.(tmp|old)-(\d+)$")


def leftovers(root: Path, depth: int = 3) -> list[Path]:
    """Half-built things a killed vlab left under root (their builder's pid is gone)."""
    found = []
    for folder, subdirs, files in os.walk(root):
        here = Path(folder)
        if len(here.relative_to(root).parts) >= depth:
            subdirs[:] = []
        for name in [*subdirs, *files]:
            m = LEFTOVER_RE.fullmatch(name)
            if m and not procs.alive(int(m.group(2))):
                found.append(here / name)
        subdirs[:] = [d for d in subdirs if not LEFTOVER_RE.fullmatch(d)]
    return found


def sweep(root: Path) -> list[Path]:
    """Remove what leftovers() finds, unless something is still mounted in it."""
    removed = []
    for path in leftovers(root):
        if mounts.mounted_under(path):
            continue
        _remove(path)
        removed.append(path)
    return removed


def tree_key(root: Path, folders: tuple[str, ...]) -> str:
    """A digest of the names, sizes, modes, link targets and modification times of every
    file and folder under the root's folders (never following a link), relative to the root
    (the same image mounted for another lab is the same tree): ~0.2 s for a Debian root. A
    folder's own time changes with what it holds: one added empty counts too."""
    h = hashlib.sha256()
    for top in folders:
        start = root / top
        if start.is_symlink() or not start.is_dir():
            h.update(f"{top} {os.readlink(start) if start.is_symlink() else '-'}\0".encode())
            continue
        for folder, subdirs, names in os.walk(start):
            subdirs.sort()
            rel = os.path.relpath(folder, root)
            with contextlib.suppress(OSError):
                st = os.lstat(folder)
                h.update(f"{rel}/ {st.st_mode} {st.st_mtime_ns}\0".encode())
            for name in sorted(names + [d for d in subdirs if os.path.islink(
                    os.path.join(folder, d))]):
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
                h.update(f"{rel}/{name} {st.st_size} {st.st_mode} {st.st_mtime_ns} {link}\0"
                         .encode())
    return h.hexdigest()[:20]


def is_current(folder: Path, inputs: str) -> bool:
    """True when a folder built from the same inputs is already in place."""
    stamp = folder / STAMP
    return stamp.is_file() and stamp.read_text() == inputs


def stamp(folder: Path, inputs: str) -> None:
    (folder / STAMP).write_text(inputs)
