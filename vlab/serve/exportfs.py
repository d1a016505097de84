"""Each export a filesystem of its own.

nfs-ganesha's VFS backend turns an NFS file handle into an inode with open_by_handle_at, on
whatever filesystem the export lies on, and checks no subtree: a client that forges a handle
(the export's filesystem id, another inode number) reaches every file of that filesystem. A
root on the machine's own filesystem (vlab's busybox and Debian roots, a `dir` root) would
hand the machine's files to any terminal. So such a root is exported from an ext4 image of
it, built once and cached by the tree's content, which the lab's ganesha mounts over the
root's path in a mount namespace of its own (vlab/serve/confine.py): handles reach that image
only, and the machine never sees the mount. An image root already is a filesystem of its
own (vlab mounts it from a loop device).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vlab import run
from vlab.build import cache
from vlab.plan.lab import LabPlan
from vlab.progress import Say
from vlab.scenario.model import RootSource

SLACK = 1.15  # the image's size over what the tree takes: ext4's metadata and inode tables
BLOCK = 4096


def needs_image(plan: LabPlan) -> bool:
    """A root that lies on a filesystem the machine shares (everything but an image root)."""
    return plan.root_source is not RootSource.IMAGE


def _usage(root: Path) -> tuple[int, int]:
    """Bytes (in whole blocks) and inodes the tree takes, never following a link."""
    size, inodes = 0, 1
    for folder, subdirs, names in os.walk(root):
        size += BLOCK
        for name in [*names, *subdirs]:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            inodes += 1
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                size += (st.st_size + BLOCK - 1) // BLOCK * BLOCK
    return size, inodes


def image(plan: LabPlan, cache_dir: Path, say: Say) -> Path:
    """The export's ext4 image, built unless the cache has one of the same tree."""
    root = plan.export_path
    tops = tuple(sorted(os.listdir(root)))
    key = cache.key("ext4-export", cache.tree_key(root, tops), *tops)
    final = cache_dir / "exports" / f"{key}.ext4"
    if final.exists():
        return final
    size, inodes = _usage(root)
    blocks = int(size * SLACK) // BLOCK + 4096  # at least 16 MiB more for ext4's own
    say(f"export: an ext4 image of {root} ({size >> 20} MiB), its own filesystem (once)")
    with cache.publish(final) as tmp:
        # No journal (ganesha's mount changes no file), owners and modes as in the tree, every
        # file, link, device node and hard link copied as it is (mkfs never follows a link).
        run.run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-N", str(inodes + 1024),
                 "-O", "^has_journal", "-L", "vlab-export", "-d", str(root), str(tmp),
                 str(blocks)], timeout=1200,
                hint=f"the export image of {root} could not be made (e2fsprogs)")
        if "lost+found" not in tops:  # mkfs adds it; the export is the tree as it is
            run.run(["debugfs", "-w", "-R", "rmdir /lost+found", str(tmp)],
                    hint=f"the export image of {root} could not be made (e2fsprogs)")
        tmp.chmod(0o600)
    return final
