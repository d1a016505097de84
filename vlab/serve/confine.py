"""The NFS server's mount and PID namespaces: its export a read-only filesystem of its own,
every other mount read-only but the server's own folder.

vlab starts each lab's nfs-ganesha as
`python -m vlab.serve.confine [--image IMAGE] [--pid-file FILE] [--caps web] SERVER_DIR RUN_DIR
EXPORT -- ARGV...`, and the PXE twins' web server (lighttpd, vlab/serve/web.py) the same way
with `--caps web` (EXPORT is then the tree it serves),
which enters a new mount namespace (private propagation: nothing it mounts reaches the
machine) and there:

- with --image, mounts IMAGE (an ext4 image of the root, vlab/serve/exportfs.py) over EXPORT,
  read-only, nosuid, nodev, noexec, noatime: a file handle a client forges reaches that
  filesystem only, never the one the root's folder lies on; the loop device goes with the
  namespace;
- remounts every mount point in it read-only (keeping its nosuid, nodev and noexec), puts
  a read-only folder of SERVER_DIR's on /tmp, binds SERVER_DIR (ganesha's configuration,
  log, pid file and recovery folder) writable and EXPORT read-only where they were (either
  may be in /tmp). So the export is read-only in the kernel, whatever the export's
  configuration says: every write a client asks for fails with EROFS, and the server can
  write nothing of the machine's but its own folder. (ganesha's own FSAL opens files by
  handle relative to the root of the filesystem they are on, not through the exported path,
  so binding only the exported folder read-only would not be enough.) The configuration's
  `Access_Type` is RW for NFSv4.0 clients for a reason of that protocol's: see
  domains/nfs/ganesha.conf.j2;
- binds RUN_DIR on /run when it is given (the lab's own rpcbind socket),

and runs ARGV as process 1 of a PID namespace of its own, with a /proc of that namespace
(the server sees, signals and traces no process of the machine's), with no capability but
GANESHA_CAPS in its bounding set. The exit status is ARGV's; 125 means the namespaces could
not be set up (the message says why). With --pid-file FILE, it does not wait: once ARGV runs,
it writes ARGV's pid as the machine sees it into FILE and exits 0 (the server runs in the
foreground of its namespace, and vlab follows and stops it by that pid); a small watcher,
outside those namespaces, stays until ARGV ends, and then, if FILE still names it (vlab's
stop removes FILE first), writes the time it ended into FILE with the suffix `.ended`:
`vlab status` says since when a lab's server is gone, whatever killed it.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import time
from pathlib import Path

from vlab import linux, run
from vlab.errors import CommandError
from vlab.linux import (
    CLONE_NEWNS,
    CLONE_NEWPID,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
)

# What a remount must keep of a mount's flags (statvfs's ST_* have the same values)
KEPT_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC
SETUP_FAILED = 125

class ConfineError(Exception):
    pass


def _mount(source: str | None, target: str, flags: int, *, gone_ok: bool = False,
           fstype: str | None = None) -> None:
    try:
        linux.mount(source, target, flags, fstype)
    except OSError as err:
        if gone_ok and err.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise ConfineError(f"mount {target}: {err.strerror}") from None


def _unshare(flags: int) -> None:
    try:
        linux.unshare(flags)
    except OSError as err:
        raise ConfineError(f"unshare: {err.strerror}") from None


def mount_points(mountinfo: str) -> list[str]:
    """Every mount point of a /proc/self/mountinfo text, its octal escapes (\\040) decoded."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(fields[4].encode().decode("unicode_escape").encode("latin-1")
                          .decode(errors="surrogateescape"))
    return points


def _kept_flags(path: str) -> int:
    """The nosuid, nodev and noexec a mount has: a read-only remount without them would drop
    them (as root it may)."""
    try:
        return os.statvfs(path).f_flag & KEPT_FLAGS
    except OSError:
        return 0


def _mount_image(image: str, export: str) -> None:
    """IMAGE over EXPORT, read-only, by util-linux's mount (-o loop: autoclear, so the loop
    device is freed once the namespace, and with it the mount, is gone)."""
    try:
        run.run(["mount", "-t", "ext4", "-o", "loop,ro,nosuid,nodev,noexec,noatime", image,
                 export])
    except CommandError as err:
        raise ConfineError(f"the export image {image} cannot be mounted on {export}: "
                           f"{err.message()}") from None


def confine(server_dir: str, run_dir: str, export: str, image: str | None) -> None:
    _unshare(CLONE_NEWNS)
    _mount(None, "/", MS_REC | MS_PRIVATE)
    if image is not None:
        _mount_image(image, export)
    _all_readonly(server_dir, export)
    if run_dir:
        _mount(run_dir, "/run", MS_BIND)
        _mount(None, "/run", MS_REMOUNT | MS_BIND)


def _all_readonly(server_dir: str, export: str) -> None:
    with open("/proc/self/mountinfo") as f:
        points = mount_points(f.read())
    # Held open across the /tmp below, which may hide either (a root in /tmp, a state folder
    # in /tmp); opened in this namespace, so they can be bound here.
    kept = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY), writable, _kept_flags(path))
            for path, writable in ((server_dir, True), (export, False))]
    tmp = os.path.join(server_dir, "tmp")
    os.makedirs(tmp, exist_ok=True)
    os.chmod(tmp, 0o711)  # the web server's user passes through it to a tree or log in /tmp
    for point in points:
        # A remount of the bind's flags: this namespace's copy of the mount only. A mount
        # point no path leads to (under a later mount) is out of ganesha's reach too.
        _mount(None, point, MS_REMOUNT | MS_BIND | MS_RDONLY | _kept_flags(point),
               gone_ok=True)
    # ganesha's /tmp is a folder of its own, read-only: ganesha's VFS backend tests OFD
    # locks on a file it makes in /tmp, and finding none it leaves clients' locks to its own
    # state layer. With them it opens each file a client locks read-write (read locks too),
    # which fails on the read-only export (STATE_READ_ONLY_FS: a Debian root's nfs-utils
    # then fail their read lock of /etc/nfs.conf, and units with them).
    _mount(tmp, "/tmp", MS_BIND)
    _mount(None, "/tmp", MS_REMOUNT | MS_BIND)  # a bind of a read-only mount is read-only
    for path, _fd, _writable, _flags in kept:
        os.makedirs(path, exist_ok=True)  # in the new /tmp if it was in /tmp
    _mount(None, "/tmp", MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path, fd, writable, flags in kept:
        _mount(f"/proc/self/fd/{fd}", path, MS_BIND)
        _mount(None, path, MS_REMOUNT | MS_BIND | flags | (0 if writable else MS_RDONLY))
        os.close(fd)


# What nfs-ganesha 4.3's VFS backend needs, and no more: open files by handle (dac_read_search),
# read any file of the export and act as each client's user (dac_override, fowner, fsetid,
# chown, setuid, setgid), bind ports (net_bind_service). Left out, among the rest: sys_admin
# (no mount, no remount of the export read-write), sys_ptrace, sys_module, net_admin, mknod,
# sys_rawio, sys_resource (this machine kind grants it to nobody, and ganesha serves without).
# Checked by every boot of the suite.
GANESHA_CAPS = frozenset({0, 1, 2, 3, 4, 6, 7, 10})
# What lighttpd needs, and no more: bind port 80 (net_bind_service), then become its user
# (setgid, setuid), as which it reads the tree like anyone may.
WEB_CAPS = frozenset({6, 7, 10})
CAPS = {"ganesha": GANESHA_CAPS, "web": WEB_CAPS}


def _keep_only(caps: frozenset[int]) -> None:
    """Drop every capability but `caps` from the bounding set, for what this execs."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if cap not in caps:
            try:
                linux.drop_from_bounding_set(cap)
            except OSError as err:
                raise ConfineError(f"drop capability {cap}: {err.strerror}") from None


def _own_proc() -> None:
    """A /proc of the new PID namespace's, in place of the machine's: the server sees no
    process but its own."""
    _mount("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, fstype="proc")


ENDED_SUFFIX = ".ended"


def ended_file(pid_file: Path) -> Path:
    """Where the watcher writes when the server of `pid_file` ended (epoch seconds)."""
    return pid_file.with_name(pid_file.name + ENDED_SUFFIX)


def _start_watcher(pid_file: str) -> int:
    """Fork the watcher, in the machine's namespaces (so it holds none of the server's
    mounts); the returned pipe's write end takes the server's pid."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    if os.fork() != 0:
        os.close(read_end)
        return write_end
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as f:
            text = f.read().decode()
        if text.strip().isdigit():
            _watch(int(text), Path(pid_file))
    finally:
        os._exit(0)


def _watch(pid: int, pid_file: Path) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    poll = select.poll()
    poll.register(pidfd, select.POLLIN)
    while not poll.poll():
        pass
    ended = time.time()
    try:
        if pid_file.read_text().strip() != str(pid):
            return  # stopped by vlab (it removed the pid file), or started again
        tmp = ended_file(pid_file).with_suffix(".new")
        tmp.write_text(f"{ended:.3f}\n")
        os.replace(tmp, ended_file(pid_file))
    except OSError:
        pass


def _run_in_own_pid_namespace(argv: list[str], pid_fd: int | None,
                              caps: frozenset[int] = GANESHA_CAPS,
                              watcher: int | None = None) -> int:
    """ARGV as process 1 of a PID namespace of its own. Without pid_fd, wait for it and
    return its exit status; with it, write its pid (as the machine sees it) there once it has
    executed ARGV, and return 0 at once: ARGV runs on, and goes with every process it left
    when it ends (the namespace's init)."""
    _unshare(CLONE_NEWPID)
    # Closed on exec: the parent reads end of file once ARGV runs, or why it could not.
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            _own_proc()
            _keep_only(caps)
            os.execvp(argv[0], argv)
        except (ConfineError, OSError) as err:
            os.write(write_end, f"{argv[0]}: {err}".encode())
        os._exit(SETUP_FAILED)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        failed = f.read().decode(errors="replace")
    if failed:
        os.waitpid(pid, 0)
        raise ConfineError(failed)
    if pid_fd is None:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    with os.fdopen(pid_fd, "w") as f:
        f.write(f"{pid}\n")
    if watcher is not None:
        os.write(watcher, f"{pid}".encode())
        os.close(watcher)
    return 0


def main(argv: list[str]) -> int:
    options: dict[str, str] = {}
    while len(argv) > 1 and argv[0] in ("--image", "--pid-file", "--caps"):
        options[argv[0]] = argv[1]
        argv = argv[2:]
    image, pid_file = options.get("--image"), options.get("--pid-file")
    caps = CAPS.get(options.get("--caps", "ganesha"))
    if len(argv) < 5 or argv[3] != "--" or caps is None:
        print("usage: python -m vlab.serve.confine [--image IMAGE] [--pid-file FILE] [--caps "
              "ganesha|web] SERVER_DIR RUN_DIR EXPORT -- ARGV...", file=sys.stderr)
        return SETUP_FAILED
    try:
        # Opened before the namespace, whose /tmp is the server's own: FILE may be in /tmp.
        pid_fd = None if pid_file is None else os.open(
            pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        watcher = None if pid_file is None else _start_watcher(pid_file)
        confine(argv[0], argv[1], argv[2], image)
        return _run_in_own_pid_namespace(argv[4:], pid_fd, caps, watcher)
    except (ConfineError, OSError) as err:
        print(f"vlab.serve.confine: {err}", file=sys.stderr)
        return SETUP_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
