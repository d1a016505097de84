"""The NFS server's mount namespace: every mount read-only, but the server's own folder.

vlab starts each lab's nfs-ganesha as
`python -m vlab.confine SERVER_DIR RUN_DIR EXPORT -- ARGV...`, which enters a new mount
namespace (private propagation: nothing it mounts reaches the machine), remounts every mount
point in it read-only, puts a folder of SERVER_DIR's on /tmp, binds SERVER_DIR (ganesha's
configuration, log, pid file and recovery folder) writable and EXPORT read-only where they
were (either may be in /tmp), binds RUN_DIR on /run when it is not empty (the lab's own
rpcbind socket), and executes ARGV.

So the export is read-only in the kernel, whatever the export's configuration says: every
write a client asks for fails with EROFS, and ganesha can write nothing of the machine's but
its own folder. (ganesha's own FSAL opens files by handle relative to the root of the
filesystem they are on, not through the exported path, so binding only the exported folder
read-only would not be enough.) The configuration's `Access_Type` is RW for a reason of
NFSv4.0's: see domains/nfs/ganesha.conf.j2.

The exit status is ARGV's; 125 means the namespace could not be set up (the message says why).
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
SETUP_FAILED = 125

_libc = ctypes.CDLL(None, use_errno=True)


class ConfineError(Exception):
    pass


def _mount(source: str | None, target: str, flags: int, *, gone_ok: bool = False) -> None:
    if _libc.mount(source and source.encode(), target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        if gone_ok and err in (errno.ENOENT, errno.ENOTDIR):
            return
        raise ConfineError(f"mount {target}: {os.strerror(err)}")


def mount_points(mountinfo: str) -> list[str]:
    """Every mount point of a /proc/self/mountinfo text, its octal escapes (\\040) decoded."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(fields[4].encode().decode("unicode_escape").encode("latin-1")
                          .decode(errors="surrogateescape"))
    return points


def confine(server_dir: str, run_dir: str, export: str) -> None:
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise ConfineError(f"unshare: {os.strerror(ctypes.get_errno())}")
    _mount(None, "/", MS_REC | MS_PRIVATE)
    with open("/proc/self/mountinfo") as f:
        points = mount_points(f.read())
    # Held open across the /tmp below, which may hide either (a root in /tmp, a state folder
    # in /tmp); opened in this namespace, so they can be bound here.
    kept = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY), writable)
            for path, writable in ((server_dir, True), (export, False))]
    tmp = os.path.join(server_dir, "tmp")
    os.makedirs(tmp, mode=0o700, exist_ok=True)
    for point in points:
        # A remount of the bind's flags: this namespace's copy of the mount only. A mount
        # point no path leads to (under a later mount) is out of ganesha's reach too.
        _mount(None, point, MS_REMOUNT | MS_BIND | MS_RDONLY, gone_ok=True)
    # ganesha's /tmp is a folder of its own (it tests OFD locks there, and without them it
    # refuses every lock).
    _mount(tmp, "/tmp", MS_BIND)
    _mount(None, "/tmp", MS_REMOUNT | MS_BIND)
    for path, fd, writable in kept:
        os.makedirs(path, exist_ok=True)  # in the new /tmp if it was in /tmp
        _mount(f"/proc/self/fd/{fd}", path, MS_BIND)
        _mount(None, path, MS_REMOUNT | MS_BIND | (0 if writable else MS_RDONLY))
        os.close(fd)
    if run_dir:
        _mount(run_dir, "/run", MS_BIND)
        _mount(None, "/run", MS_REMOUNT | MS_BIND)


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print("usage: python -m vlab.confine SERVER_DIR RUN_DIR EXPORT -- ARGV...",
              file=sys.stderr)
        return SETUP_FAILED
    try:
        confine(argv[0], argv[1], argv[2])
    except (ConfineError, OSError) as err:
        print(f"vlab.confine: {err}", file=sys.stderr)
        return SETUP_FAILED
    os.execvp(argv[4], argv[4:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
