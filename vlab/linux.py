"""The kernel's calls vlab makes that Python 3.11's os module lacks (mount, umount2, unshare,
prctl's bounding-set drop, openat2), through ctypes, each raising OSError as os does, and
their flags: the one place for that scaffolding (vlab.sandbox, vlab.confine, vlab.mounts)."""

from __future__ import annotations

import ctypes
import os

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_BIND, MS_REC, MS_PRIVATE = 32, 1024, 4096, 16384, 1 << 18
MNT_DETACH = 2
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x2000000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME = 0x10000000, 0x20000000, 0x40000000, 0x80
CLONE_NAMESPACES = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
                    CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME)
PR_CAPBSET_DROP = 24
# openat2(2), Linux 5.6; the same call number on x86_64 and arm64.
SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS, RESOLVE_BENEATH, RESOLVE_IN_ROOT = 0x02, 0x08, 0x10

_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _checked(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)
    return rc


def mount(source: str | None, target: str, flags: int, fstype: str | None = None,
          data: str | None = None) -> None:
    _checked(_libc.mount(source and source.encode(), target.encode(),
                         fstype and fstype.encode(), ctypes.c_ulong(flags),
                         data and data.encode()), target)


def umount(target: str, flags: int = 0) -> None:
    _checked(_libc.umount2(target.encode(), flags), target)


def unshare(flags: int) -> None:
    _checked(_libc.unshare(flags), "unshare")


def drop_from_bounding_set(cap: int) -> None:
    _checked(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"capability {cap}")


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    return _checked(int(_libc.syscall(SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how),
                                      ctypes.sizeof(how))), path)
