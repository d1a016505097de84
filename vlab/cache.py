"""The artifact cache: content-addressed keys and atomic publication of built things."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    _remove(old)


def is_current(folder: Path, inputs: str) -> bool:
    """True when a folder built from the same inputs is already in place."""
    stamp = folder / STAMP
    return stamp.is_file() and stamp.read_text() == inputs


def stamp(folder: Path, inputs: str) -> None:
    (folder / STAMP).write_text(inputs)
