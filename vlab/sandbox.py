"""A root's own initrd builder, run where it can harm nothing of the host.

The page runs mkinitrd chrooted in the root with the host's /proc and /sys mounted; a
chroot is no boundary for root, and an image's builder is the image's code. vlab runs it as
`python -m vlab.sandbox ROOT SCRATCH -- ARGV...`, which, before it executes anything of the
root's:

- enters new mount, PID, network, IPC and UTS namespaces;
- binds the root read-only onto itself, with what is mounted in it (an image's /boot), and
  mounts where a builder writes: a tmpfs on /dev (nodev) holding bind mounts of the host's null,
  zero, full, random, urandom and tty only; the scratch folder (the builder's only way out,
  nosuid, nodev) on /tmp; tmpfs on /run, /var/tmp and /var/lock; a fresh /proc of the new PID
  namespace (it sees only the builder's processes) with /proc/sys, /proc/sysrq-trigger and the
  other host knobs read-only or masked; sysfs read-only;
- pivots into the root and detaches the host's tree, so no path, `..` or chroot leads out;
- drops every capability but the file-ownership ones (no mount, no module loading, no raw
  I/O, no ptrace, no network administration) and sets no_new_privs.

Device nodes the builder makes are dead (nodev everywhere). The exit status is the builder's;
125 means the sandbox itself could not be set up (the message says why).
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
import sys
from pathlib import Path

from vlab.mounts import inside, mounted_under

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
SYS_PIVOT_ROOT = 155  # x86-64
# chown, dac_override, dac_read_search, fowner, fsetid, kill, setgid, setuid, mknod: what a
# builder needs to copy files with their owners and modes into its archive.
KEEP_CAPS = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 27})
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PROC_READONLY = ("sys", "sysrq-trigger", "bus", "fs", "irq")
PROC_MASKED = ("kcore", "keys", "timer_list", "sched_debug", "kmsg", "kallsyms", "kpagecount",
               "kpageflags", "kpagecgroup", "acpi", "scsi")
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": "/tmp", "LC_ALL": "C", "HOME": "/"}
SETUP_FAILED = 125

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(Exception):
    pass


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _check(_libc.mount(source and source.encode(), target.encode(),
                       fstype and fstype.encode(), ctypes.c_ulong(flags),
                       data and data.encode()), f"mount {target}")


def _bind_readonly(path: str, extra: int = 0) -> None:
    _mount(path, path, None, MS_BIND)
    _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | extra)


def _image_boot(point: str) -> bool:
    """A read-only mount of a loop device at point: an image's /boot partition, as vlab
    mounts it."""
    with open("/proc/self/mounts") as f:
        for line in f:
            source, target, _fs, options = line.split()[:4]
            if target == point and source.startswith("/dev/loop") and "ro" in options.split(","):
                return True
    return False


def _folder(root: Path, rel: str, required: bool) -> str | None:
    """A folder of the root, resolved inside it (a symlink cannot aim a mount at the host)."""
    target = inside(root, rel)
    if target.is_dir() and not target.is_symlink():
        return str(target)
    if required:
        raise SandboxError(f"{root} has no /{rel} folder; fix: a root filesystem needs /{rel}")
    return None


def _prepare(root: Path, scratch: Path) -> None:
    """Inside the new namespaces, as their PID 1: build the builder's view and enter it."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    top = str(root)
    # Recursive, for an image's own /boot partition (vlab mounts it read-only from a loop
    # device on the root's /boot); anything else mounted inside a root is left out of the view
    # (a tree's own mounts could lead to the host's files).
    _mount(top, top, None, MS_BIND | MS_REC)
    boot = os.path.join(top, "boot")
    for point in sorted({str(p) for p in mounted_under(root)}, key=lambda p: -p.count("/")):
        if point != top and not (point == boot and _image_boot(point)):
            _check(_libc.umount2(point.encode(), MNT_DETACH), f"leave {point} out")
    for point in (top, boot):
        if point == top or _image_boot(point):
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    dev = _folder(root, "dev", True)
    assert dev is not None
    _mount("none", dev, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755")
    for name in DEVICES:
        node = Path(dev, name)
        node.touch(0o666)
        _mount(f"/dev/{name}", str(node), None, MS_BIND)
    os.symlink("/proc/self/fd", Path(dev, "fd"))
    tmp = _folder(root, "tmp", True)
    assert tmp is not None
    _mount(str(scratch), tmp, None, MS_BIND)
    _mount(None, tmp, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    for rel in ("run", "var/tmp", "var/lock"):
        folder = _folder(root, rel, False)
        if folder is not None:
            _mount("none", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    proc = _folder(root, "proc", True)
    assert proc is not None
    _mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READONLY:
        if os.path.exists(f"{proc}/{name}"):
            _bind_readonly(f"{proc}/{name}", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_MASKED:
        path = f"{proc}/{name}"
        if os.path.isdir(path):
            _mount("none", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0")
        elif os.path.exists(path):
            _mount("/dev/null", path, None, MS_BIND)
    sys_dir = _folder(root, "sys", True)
    assert sys_dir is not None
    _mount("sysfs", sys_dir, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(top)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the host's tree")
    os.chdir("/")
    for cap in range(last_cap + 1):
        if cap not in KEEP_CAPS:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m vlab.sandbox ROOT SCRATCH -- PROGRAM [ARG...]", file=sys.stderr)
        return 2
    root, scratch, command = Path(argv[0]).resolve(), Path(argv[1]).resolve(), argv[3:]
    if not stat.S_ISDIR(os.lstat(scratch).st_mode):
        print(f"vlab sandbox: {scratch} is not a folder", file=sys.stderr)
        return SETUP_FAILED
    try:
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC
                             | CLONE_NEWUTS), "unshare")
    except SandboxError as err:
        print(f"vlab sandbox: {err}", file=sys.stderr)
        return SETUP_FAILED
    pid = os.fork()
    if pid == 0:
        try:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            _prepare(root, scratch)
            os.execvpe(command[0], command, ENV)
        except (SandboxError, OSError) as err:
            print(f"vlab sandbox: {err}", file=sys.stderr)
        os._exit(SETUP_FAILED)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
