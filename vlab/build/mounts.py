"""Loop devices and mounts, as the seed page makes them by hand, on one context-managed stack.

Whatever is mounted or attached through a MountStack is undone in reverse order when the
`with` block ends: on success, on error and on Ctrl-C. `keep()` hands entries over to the
caller (the lab keeps its image mounted while it runs; `vlab down` undoes it by record).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from vlab import linux, run
from vlab.errors import HostError


def open_in(top: Path, rel: str, flags: int, *, beneath: bool = False) -> int:
    """A descriptor of `rel` resolved by the kernel inside `top` (openat2): as if `top` were
    `/` (RESOLVE_IN_ROOT: a root's own `/lib -> usr/lib` works, `..` and absolute links stay
    in it), or with `beneath` strictly under `top` (RESOLVE_BENEATH: a link leading out fails
    with EXDEV). Never through /proc's magic links, whatever the tree does meanwhile. Raises
    OSError as os.open does."""
    resolve = linux.RESOLVE_NO_MAGICLINKS | (linux.RESOLVE_BENEATH if beneath
                                             else linux.RESOLVE_IN_ROOT)
    dirfd = os.open(top, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for _ in range(8):  # EAGAIN: a rename somewhere in the tree raced the walk
            try:
                return linux.openat2(dirfd, rel.lstrip("/") or ".", flags | os.O_CLOEXEC,
                                     resolve)
            except BlockingIOError:
                continue
            except OSError as err:
                raise OSError(err.errno, err.strerror, str(top / rel.lstrip("/"))) from None
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), str(top / rel.lstrip("/")))
    finally:
        os.close(dirfd)


def inside(root: Path, rel: str) -> Path | None:
    """Where `rel` is in `root`, following the root's symlinks as a chroot would and never
    out of it (open_in); None when nothing is there."""
    try:
        fd = open_in(root, rel, os.O_PATH)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise HostError(f"{root / rel.lstrip('/')} cannot be resolved inside {root}: "
                        f"{err.strerror}") from None
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    finally:
        os.close(fd)


def head(path: Path, limit: int) -> bytes:
    """The first `limit` bytes of a regular file in an untrusted tree; b"" for anything else
    (a FIFO is never opened for a read that would block, a symlink never followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return b""
    try:
        return os.read(fd, limit) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        return b""
    finally:
        os.close(fd)


def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(_unescape(line.split()[1]) == real for line in f)


def source_of(path: Path) -> str:
    """The device mounted at path (the last mount there wins), "" if none."""
    real = os.path.realpath(path)
    source = ""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[1]) == real:
                source = _unescape(fields[0])
    return source


def mounted_under(path: Path) -> list[Path]:
    """Mount points at or below path, deepest first (the order to unmount them in)."""
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        points = {_unescape(line.split()[1]) for line in f}
    inner = [p for p in points if p == real or p.startswith(real.rstrip("/") + "/")]
    return [Path(p) for p in sorted(inner, key=lambda p: (-p.count("/"), p))]


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def umount(path: Path) -> None:
    # A process that was just killed can hold a mount busy for a moment: retry briefly.
    for _attempt in range(20):
        if not is_mounted(path):
            return
        if run.run(["umount", str(path)], check=False).returncode == 0:
            return
        time.sleep(0.1)
    run.run(["umount", str(path)], hint=f"something still uses {path}: see fuser -vm {path}")


def detach(loop: str) -> None:
    out = run.run(["losetup", "--list", "--noheadings", "--output", "NAME"], check=False).stdout
    if loop in out.split():
        run.run(["losetup", "--detach", loop])


def loops_of(image: Path) -> list[str]:
    """Loop devices backed by a file."""
    out = run.run(["losetup", "--noheadings", "--output", "NAME", "--associated", str(image)],
                  check=False).stdout
    return out.split()


# The source name of the tmpfs an image's vfat /boot is read into (nfsroot), by which the
# builder's sandbox knows it for the image's own.
BOOT_TMPFS = "vlab-image-boot"
LOOP_CTL_GET_FREE, LOOP_CONFIGURE = 0x4C82, 0x4C0A
LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR = 1, 4


class _LoopInfo64(ctypes.Structure):
    _fields_ = [("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64),
                ("lo_rdevice", ctypes.c_uint64), ("lo_offset", ctypes.c_uint64),
                ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
                ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
                ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * 64),
                ("lo_crypt_name", ctypes.c_uint8 * 64), ("lo_encrypt_key", ctypes.c_uint8 * 32),
                ("lo_init", ctypes.c_uint64 * 2)]


class _LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32),
                ("info", _LoopInfo64), ("reserved", ctypes.c_uint64 * 8)]


@contextlib.contextmanager
def loop_over(fd: int, offset: int = 0, size: int = 0) -> Iterator[str]:
    """A read-only loop device over the open file `fd` (from `offset`, `size` bytes; 0: to
    the end), held while the `with` block mounts it. Autoclear: it goes when its last user
    (the mount) does, and at once if nothing mounted it. The file is the one vlab opened and
    checked, never found again by its name (losetup and mount -o loop open the path anew)."""
    import fcntl

    config = _LoopConfig(fd=fd)
    config.info.lo_offset, config.info.lo_sizelimit = offset, size
    config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
    with open("/dev/loop-control", "rb") as control:
        for _attempt in range(20):  # another process may take the free one first
            device = f"/dev/loop{fcntl.ioctl(control, LOOP_CTL_GET_FREE)}"
            for _wait in range(50):  # devtmpfs makes the node a moment later (no udev)
                if os.path.exists(device):
                    break
                time.sleep(0.02)
            loop = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(loop, LOOP_CONFIGURE, bytes(config))
            except OSError as err:
                os.close(loop)
                if err.errno == errno.EBUSY:
                    continue
                raise HostError("a loop device over the image could not be set up: "
                                f"{err.strerror}") from None
            try:
                yield device
            finally:
                os.close(loop)
            return
    raise HostError("no free loop device after 20 tries; fix: losetup -D stale ones")


def mount(source: str, target: Path, fstype: str = "", options: str = "") -> None:
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", options]
    run.run([*argv, source, str(target)])


class MountStack:
    """Mounts made one after another, undone innermost first when the stack closes."""

    def __init__(self) -> None:
        self._targets: list[Path] = []

    def __enter__(self) -> MountStack:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def mount(self, source: str, target: Path, fstype: str = "", options: str = "") -> None:
        mount(source, target, fstype, options)
        self._targets.append(target)

    def close(self) -> None:
        errors = []
        while self._targets:
            target = self._targets.pop()
            try:
                umount(target)
            except Exception as err:  # keep undoing the rest, then report
                errors.append(str(err))
        if errors:
            raise HostError("could not undo every mount:\n  " + "\n  ".join(errors))
