"""A root's own initrd builder, run where it holds no capability of the machine's.

The page runs mkinitrd chrooted in the root with the host's /proc and /sys mounted; a
chroot is no boundary for root, and an image's builder is the image's code. vlab runs it as
`python -m vlab.build.sandbox ROOT SCRATCH [--keep NAME] -- ARGV...`. This launcher, as root:

- enters a mount namespace of its own and leaves out of it every mount inside the root but
  an image's /boot partition (a tree's own mounts could lead to the host's files);
- copies what vlab put in SCRATCH (the builder's configuration) into a size-capped tmpfs of
  that namespace: this tmpfs is the builder's /tmp and its only writable place;
- runs the builder through bubblewrap as an unprivileged user of the machine (SANDBOX_UID:
  no account, no file of the machine has it), root only inside a user namespace of its own
  that maps nothing else, with no capability at all, in new PID, network, IPC, UTS and cgroup
  namespaces, the root read-only as its `/`, a minimal /dev, a /proc of its own, no /sys, a
  clean environment, a session of its own (no TIOCSTI into vlab's terminal), a process
  limit, and a seccomp filter (SECCOMP_DENIED) that refuses with EPERM what no builder needs:
  file handles (the call that reads any inode of a filesystem by number), mount calls,
  ptrace, new namespaces, kexec, bpf, keyrings, module loading and the like; chown succeeds
  and does nothing (CHOWN_CALLS: the owners a builder copies never reach its archive);
- copies back out of the tmpfs the file named by --keep (a regular file, size-capped, never
  through a symlink) into SCRATCH, and returns the builder's exit status.

Bubblewrap needs the mount points in the root (/dev, /proc, /tmp); 125 means the sandbox
itself could not be set up (the message says why).

A program of the machine's that parses an image's bytes (qemu-img) runs in bubblewrap too,
with the same isolation and filter (parser_argv): uid 0 of a user namespace of its own,
without any capability, seeing /usr and its output folder only.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
import sys
from pathlib import Path

from vlab import linux
from vlab.build.mounts import BOOT_TMPFS, mounted_under
from vlab.linux import MS_BIND, MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT

# The builder's uid on the machine: unprivileged, and vlab checks that no account has it.
# Inside its user namespace it is root (uid 0), with no capability over anything outside.
SANDBOX_UID = 2_147_000_000
TMP_SIZE = 2 << 30  # the builder's /tmp: its configuration, its staging tree, its output
KEEP_MAX = 1 << 30  # the file copied out of it (an initrd)
NPROC = 4096  # processes of SANDBOX_UID at once (a fork bomb stops there)
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SETUP_FAILED = 125
STAGE = "/tmp"  # in the launcher's own mount namespace only

# Refused with EPERM: none is needed to build an initrd, each reaches past the sandbox or
# the kernel's own defences. clone3 says ENOSYS (its flags are behind a pointer seccomp
# cannot read), so the C library falls back to clone, whose namespace flags are refused.
SECCOMP_DENIED = (
    "open_by_handle_at", "name_to_handle_at",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "kexec_load", "kexec_file_load", "reboot", "init_module", "finit_module", "delete_module",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register",
    "add_key", "request_key", "keyctl",
    "unshare", "setns",
    "iopl", "ioperm", "swapon", "swapoff", "syslog", "acct", "quotactl", "quotactl_fd",
    "lookup_dcookie", "uselib", "vhangup", "settimeofday", "clock_settime", "adjtimex",
    "clock_adjtime", "sethostname", "setdomainname",
)
CHOWN_CALLS = ("chown", "fchown", "lchown", "fchownat")
TIOCSTI, TIOCLINUX = 0x5412, 0x541C


class SandboxError(Exception):
    pass


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    try:
        linux.mount(source, target, flags, fstype, data)
    except OSError as err:
        raise SandboxError(f"mount {target}: {err.strerror}") from None


def seccomp_filter() -> int:
    """A memfd holding the compiled filter, for bubblewrap's --seccomp."""
    import pyseccomp as seccomp

    denied = seccomp.ERRNO(errno.EPERM)
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in SECCOMP_DENIED:
        f.add_rule(denied, name)
    for flag in linux.CLONE_NAMESPACES:
        f.add_rule(denied, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    # A builder copies files with their owners (cp -a); in its user namespace only its own
    # uid exists, so chown fails with EINVAL and the builder stops. The owners never matter:
    # initramfs-tools and dracut write the archive as root:root (cpio -R 0:0). So chown
    # succeeds without doing anything (as under fakeroot), with no capability handed back.
    for name in CHOWN_CALLS:
        f.add_rule(seccomp.ERRNO(0), name)
    for request in (TIOCSTI, TIOCLINUX):
        f.add_rule(denied, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, request))
    fd = os.memfd_create("vlab-seccomp", 0)
    with os.fdopen(os.dup(fd), "wb") as out:
        f.export_bpf(out)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _image_boot(point: str) -> bool:
    """A read-only mount at point of a loop device, or of the tmpfs vlab fills from a vfat
    partition: an image's /boot partition, as vlab mounts it."""
    with open("/proc/self/mounts") as f:
        for line in f:
            source, target, _fs, options = line.split()[:4]
            if target == point and (source.startswith("/dev/loop") or source == BOOT_TMPFS
                                    ) and "ro" in options.split(","):
                return True
    return False


def _is_folder(root: Path, rel: str) -> bool:
    """A real folder of the root, no symlink on the way (bubblewrap would follow one out of
    the root: Debian's /var/lock is a link to /run/lock)."""
    path = root
    for part in rel.split("/"):
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return False
    return True


def _leave_out_tree_mounts(root: Path) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    top, boot = str(root), os.path.join(str(root), "boot")
    for point in sorted({str(p) for p in mounted_under(root)}, key=lambda p: -p.count("/")):
        if point != top and not (point == boot and _image_boot(point)):
            try:
                linux.umount(point, linux.MNT_DETACH)
            except OSError as err:
                raise SandboxError(f"leave {point} out: {err.strerror}") from None


def _copy_tree(src_dir: int, dst_dir: int) -> None:
    """What vlab put into SCRATCH (folders and regular files it wrote) into the tmpfs."""
    for entry in os.scandir(src_dir):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(entry.name, 0o755, dir_fd=dst_dir)
            sub_src = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                              dir_fd=src_dir)
            sub_dst = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dst_dir)
            try:
                _copy_tree(sub_src, sub_dst)
            finally:
                os.close(sub_src)
                os.close(sub_dst)
        elif stat.S_ISREG(st.st_mode):
            _copy_file(src_dir, dst_dir, entry.name, stat.S_IMODE(st.st_mode) & 0o755)


def _copy_file(src_dir: int, dst_dir: int, name: str, mode: int, limit: int = KEEP_MAX) -> None:
    try:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=src_dir)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise SandboxError(f"{name} is a symlink, not a regular file; the sandbox copies out "
                           "regular files only") from None
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise SandboxError(f"{name} is not a regular file; the sandbox copies out regular "
                               "files only")
        if st.st_size > limit:
            raise SandboxError(f"{name} is {st.st_size} bytes, more than {limit}")
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode,
                      dir_fd=dst_dir)
        try:
            while chunk := os.read(src, 1 << 20):
                os.write(dst, chunk)
            os.fchmod(dst, mode)
        finally:
            os.close(dst)
    finally:
        os.close(src)


# Bubblewrap's isolation, for a builder and for a parser of an image's bytes alike: root only
# in a user namespace of its own that maps nothing else, new PID, network, IPC, UTS and
# cgroup namespaces, a session of its own, every capability dropped, gone with vlab.
ISOLATION = ("bwrap", "--unshare-user", "--uid", "0", "--gid", "0", "--unshare-pid",
             "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session", "--cap-drop", "ALL")


def _run(command: list[str], seccomp_fd: int, env: dict[str, str] | None = None) -> list[str]:
    """The end of a bubblewrap command line: a clean environment (PATH, LC_ALL=C and `env`),
    /, the seccomp filter, then the command."""
    setenv = []
    for name, value in {"PATH": PATH, "LC_ALL": "C", **(env or {})}.items():
        setenv += ["--setenv", name, value]
    return ["--clearenv", *setenv, "--chdir", "/", "--seccomp", str(seccomp_fd), "--",
            *command]


def bwrap_argv(root: Path, command: list[str], *, seccomp_fd: int) -> list[str]:
    """setpriv to SANDBOX_UID, then bubblewrap with the builder's view of the root."""
    argv = ["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *ISOLATION,
            "--ro-bind", f"{STAGE}/root", "/", "--dev", "/dev", "--proc", "/proc",
            "--bind", f"{STAGE}/tmp", "/tmp"]
    for rel in ("run", "var/tmp", "var/lock"):
        if _is_folder(root, rel):
            argv += ["--size", str(64 << 20), "--perms", "1777", "--tmpfs", f"/{rel}"]
    return [*argv, *_run(command, seccomp_fd, {"TMPDIR": "/tmp", "HOME": "/"})]


def parser_argv(command: list[str], *, out: Path, seccomp_fd: int) -> list[str]:
    """Bubblewrap's command line for a program of the machine's that reads an image's bytes
    (qemu-img): it runs as uid 0, so that it can open the descriptor of the image vlab hands
    it (/dev/fd/N opens the file anew, and an image may be 0600), but in a user namespace of
    its own (mapping 0 to 0 only) with every capability set empty, which keeps it from every
    file of the machine not owned by root, and it sees no file owned by root but the
    machine's /usr (read-only) and the folder `out` (bound on /out, its only writable place
    besides a /tmp of its own). ISOLATION, no_new_privs, the builders' seccomp filter."""
    argv = [*ISOLATION, "--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib64"):  # merged /usr: links; else folders
        path = Path("/") / top
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), f"/{top}"]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), f"/{top}"]
    return [*argv, "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--bind", str(out),
            "/out", *_run(command, seccomp_fd)]


def _sandbox_uid_is_free() -> None:
    import pwd

    try:
        taken = pwd.getpwuid(SANDBOX_UID)
    except KeyError:
        return
    raise SandboxError(f"uid {SANDBOX_UID} belongs to the account {taken.pw_name!r}; "
                       "vlab runs builders as that uid, which must be nobody's")


def run_sandboxed(root: Path, scratch: Path, command: list[str], keep: str | None) -> int:
    """As the launcher: set up, run the builder, copy out what it was to write."""
    for rel in ("dev", "proc", "tmp"):
        if not _is_folder(root, rel):
            raise SandboxError(f"{root} has no /{rel} folder; fix: a root filesystem "
                               f"needs /{rel}")
    _sandbox_uid_is_free()
    # Made before the stage hides /tmp: vlab and its packages may live there (a clone in
    # /tmp, its virtualenv with it), and pyseccomp is imported on first use.
    seccomp_fd = seccomp_filter()
    os.set_inheritable(seccomp_fd, True)
    host_scratch = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        linux.unshare(linux.CLONE_NEWNS)
    except OSError as err:
        raise SandboxError(f"unshare: {err.strerror}") from None
    _leave_out_tree_mounts(root)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    # Bubblewrap, as SANDBOX_UID, reaches what it binds by path: a stage on this namespace's
    # own /tmp (every parent searchable) holds the root and the builder's tmpfs.
    _mount("vlab-stage", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    stage_root, stage_tmp = f"{STAGE}/root", f"{STAGE}/tmp"
    os.mkdir(stage_root, 0o755)
    os.mkdir(stage_tmp, 0o755)
    _mount(f"/proc/self/fd/{root_fd}", stage_root, None, MS_BIND | MS_REC)
    # An image is mounted noexec on the machine; in this namespace its programs (the builder)
    # may run, inside the sandbox only: read-only, nosuid, nodev, as root may remount here
    # and bubblewrap's unprivileged user could not.
    for point in mounted_under(Path(stage_root)):
        _mount(None, str(point), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _mount("vlab-build", stage_tmp, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={TMP_SIZE},mode=0700,uid={SANDBOX_UID},gid={SANDBOX_UID}")
    tmp = os.open(stage_tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    _copy_tree(host_scratch, tmp)
    argv = bwrap_argv(root, command, seccomp_fd=seccomp_fd)
    resource.setrlimit(resource.RLIMIT_NPROC, (NPROC, NPROC))
    # The launcher is itself the program vlab.run started: it forks and execs, as a shell
    # would, so that it can copy the result out of the tmpfs after (only the seccomp fd is
    # inheritable; Python opens every other fd close-on-exec).
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as err:
            print(f"vlab sandbox: {argv[0]}: {err.strerror}; fix: apt-get install bubblewrap "
                  "util-linux", file=sys.stderr)
        os._exit(SETUP_FAILED)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code == 0 and keep is not None:
        try:
            _copy_file(tmp, host_scratch, keep, 0o644)
        except FileNotFoundError:
            raise SandboxError(f"the builder exited 0 but wrote no /tmp/{keep}") from None
    return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    keep = None
    if len(argv) >= 4 and argv[2] == "--keep":
        keep, argv = argv[3], argv[:2] + argv[4:]
    if len(argv) < 4 or argv[2] != "--" or (keep is not None and "/" in keep):
        print("usage: python -m vlab.build.sandbox ROOT SCRATCH [--keep NAME] -- PROGRAM [ARG...]",
              file=sys.stderr)
        return 2
    root, scratch = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    try:
        if not stat.S_ISDIR(os.lstat(scratch).st_mode):
            raise SandboxError(f"{scratch} is not a folder")
        return run_sandboxed(root, scratch, argv[3:], keep)
    except (SandboxError, OSError) as err:
        print(f"vlab sandbox: {err}", file=sys.stderr)
        return SETUP_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
