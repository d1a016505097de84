"""The NFS root: vlab's busybox terminal or a Debian root built into the cache, a disk image
mounted read-only, or a directory as it is; exported read-only."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from vlab import run
from vlab.artifacts import templates
from vlab.build import busybox, cache, disk, mounts, sandbox
from vlab.errors import HostError, MissingTool
from vlab.progress import Say
from vlab.scenario.model import Arch

DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "tmp", "run",
        "root", "var/tmp", "var/lock", "var/log")
ETC = {
    # root's home is a tmpfs made at boot: its ~/.ssh/authorized_keys comes from the kernel
    # command line (vlab.sshkey=), never from the shared read-only root.
    "etc/passwd": "root:x:0:0:root:/run/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/hostname": "terminal\n",
    "etc/profile": 'export PATH=/bin:/sbin:/usr/bin:/usr/sbin\nPS1="vlab-terminal:\\w# "\n',
}


# Debian's dropbear (package dropbear-bin), with the libraries it links, for `vlab ssh`.
SSH_PROGRAMS = ("/usr/sbin/dropbear", "/usr/bin/dropbearkey")


def ssh_files() -> list[Path]:
    """dropbear, dropbearkey and every shared object they load (ldd's answer), host paths."""
    missing = [p for p in SSH_PROGRAMS if not Path(p).exists()]
    if missing:
        raise MissingTool(f"{missing[0]} (the terminals' SSH server)", "dropbear-bin")
    files = {Path(p) for p in SSH_PROGRAMS}
    for program in SSH_PROGRAMS:
        for line in run.output(["ldd", program]).splitlines():
            words = line.split()
            path = words[2] if "=>" in words and len(words) > 2 else words[0]
            if path.startswith("/"):
                files.add(Path(path))
    return sorted(files)


def build_busybox(export_path: Path, arch: Arch = Arch.AMD64,
                  cache_dir: Path | None = None) -> Path:
    """Build (or reuse) the tiny root at export_path; its stamp records what went in. An
    arm64 one has no SSH server (the machine's dropbear is an x86 program)."""
    bb = busybox.binary(arch, cache_dir)
    init, lease = templates.root_init(), templates.lease_script()
    ssh = ssh_files() if arch is Arch.AMD64 else []
    inputs = cache.key(cache.file_digest(bb), init, lease, repr(sorted(ETC.items())), repr(DIRS),
                       *(f"{p}:{cache.file_digest(p)}" for p in ssh))
    if cache.is_current(export_path, inputs):
        return export_path
    with cache.publish(export_path) as tmp:
        for d in DIRS:
            (tmp / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(bb, tmp / "bin/busybox")
        for applet in busybox.applets():
            if applet not in ("bin/busybox", "sbin/init"):
                (tmp / applet).symlink_to("/bin/busybox")
        (tmp / "sbin/init").write_text(init)
        (tmp / "sbin/init").chmod(0o755)
        (tmp / "etc/vlab").mkdir()
        (tmp / "etc/vlab/lease.sh").write_text(lease)
        (tmp / "etc/vlab/lease.sh").chmod(0o755)
        for name, text in ETC.items():
            (tmp / name).write_text(text)
        for path in ssh:  # at the same paths: the loader finds its libraries as on the host
            (tmp / path.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path.resolve(), tmp / path.relative_to("/"))
        for d in ("tmp", "var/tmp", "var/lock"):
            (tmp / d).chmod(0o1777)
        tmp.chmod(0o755)
        cache.stamp(tmp, inputs)
    return export_path


def add_ssh(root: Path, files: dict[str, tuple[str, int]]) -> None:
    """sshd with its host key made at boot in RAM: no private key in the shared export."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # made by openssh-server's postinst; every terminal would share them
    for rel, (text, mode) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        (root / rel).chmod(mode)
    requires = root / "etc/systemd/system/ssh.service.requires"
    requires.mkdir(parents=True, exist_ok=True)
    (requires / "vlab-ssh-keys.service").symlink_to("../vlab-ssh-keys.service")


def build_debian(export_path: Path, suite: str, packages: tuple[str, ...], say: Say) -> Path:
    """Bootstrap a Debian root with mmdebstrap, once per suite and package set."""
    ssh = templates.debian_ssh_files() if "openssh-server" in packages else {}
    inputs = cache.key(suite, *packages, *(text for text, _mode in ssh.values()))
    if cache.is_current(export_path, inputs):
        return export_path
    if run.which("mmdebstrap") is None:
        raise MissingTool("mmdebstrap (for source = \"debian\")", "mmdebstrap")
    say(f"bootstrapping Debian {suite} with {len(packages)} packages (about a minute, once)")
    with cache.publish(export_path) as tmp:
        # No mirror named: mmdebstrap takes Debian's and, for a stable suite, adds
        # updates and security itself, so the kernel matches what apt sees here.
        # INITRD=No: the kernel's postinst hooks build no initrd while installing (vlab
        # builds its own, with its own config); dracut's would even fail half-installed.
        # In a mount namespace of its own: the proc, sys and dev mounts mmdebstrap makes in
        # the root go with it, however it ends (killed, its mounts would keep vlab down
        # from removing the half-built root).
        run.run(["unshare", "--mount", "--propagation", "private", "mmdebstrap",
                 "--variant=minbase", f"--include={','.join(packages)}",
                 suite, str(tmp)], env={"INITRD": "No"}, timeout=1800,
                hint="mmdebstrap needs Debian's archive; see its message above")
        if ssh:
            add_ssh(tmp, ssh)
        tmp.chmod(0o755)
        cache.stamp(tmp, inputs)
    return export_path


# Log replay writes to the device even on a read-only mount: each filesystem's way to skip it.
NO_REPLAY = {"ext4": "noload", "xfs": "norecovery", "btrfs": "nologreplay"}
QEMU_IMG_LIMITS = ["prlimit", "--as=4294967296", "--cpu=1800"]  # a hostile image's parser


@contextlib.contextmanager
def _filter() -> Iterator[int]:
    fd = sandbox.seccomp_filter()
    try:
        yield fd
    finally:
        os.close(fd)


def raw_image(image: Path, fd: int, cache_dir: Path, say: Say) -> Path | None:
    """None if the image (open as `fd`) is a raw disk; else a qcow2 image converted once into
    the cache, keyed by the image's checksum (its stat memoizes the checksum, so a warm run does
    not read it). Converting, not serving the qcow2 through qemu-storage-daemon's FUSE export,
    leaves no daemon for a killed run to orphan, and a warm run reads nothing of the qcow2
    but its stat. Checked, hashed and converted through the one descriptor vlab opened: a file
    swapped in at the image's path meanwhile is never read. The qcow2 image is opened
    read-only, its format given, never probed."""
    opened = Path(f"/proc/self/fd/{fd}")  # the open file itself, whatever its path names now
    if disk.image_format(opened) == "raw":
        return None
    if problem := disk.qcow2_problem(opened):
        raise HostError(f"{image} {problem}")
    if run.which("qemu-img") is None:
        raise MissingTool("qemu-img (for qcow2 images)", "qemu-utils")
    folder = cache_dir / "images"
    st = os.fstat(fd)
    version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    memo = folder / f"{cache.key(str(image), *map(str, version))}.sum"
    digest = memo.read_text().strip() if memo.is_file() else ""
    if not digest:
        say(f"image {image}: qcow2, reading its checksum (once per version of the file)")
        digest = cache.file_digest(opened)
        folder.mkdir(parents=True, exist_ok=True)
        with cache.publish(memo) as tmp:
            tmp.write_text(digest + "\n")
    final = folder / f"{digest[:32]}.raw"
    if not final.exists():
        say(f"image {image}: qcow2, converting it once into the cache ({final.name})")
        # qemu-img reads the descriptor vlab holds (inherited), not the image's path
        source = ('json:{"driver": "qcow2", "backing": null, "file": {"driver": "file", '
                  f'"filename": {json.dumps(f"/dev/fd/{fd}")}}}}}')
        with cache.scratch(folder) as out, _filter() as seccomp_fd:
            # The qcow2 parser is the machine's, its input the image's: sandboxed like a
            # builder (vlab.sandbox), writing into a folder of its own, moved into the cache.
            run.run([*QEMU_IMG_LIMITS, *sandbox.parser_argv(
                ["qemu-img", "convert", "-O", "raw", source, "/out/image.raw"], out=out,
                seccomp_fd=seccomp_fd)], timeout=3600,
                hint=f"qemu-img could not read {image} as qcow2", pass_fds=(fd, seccomp_fd))
            with cache.publish(final) as tmp:
                (out / "image.raw").rename(tmp)
                tmp.chmod(0o444)
    return final


def _mount_partition(fd: int, fstype: str, part: disk.Partition | None,
                     mountpoint: Path) -> None:
    """Attach the open raw file (or one partition of it) to a read-only loop device and
    mount its fstype read-only. The image is untrusted: its setuid files, device nodes and
    programs are inert on the host (nosuid, nodev, noexec), and its journal is not
    replayed. The loop device has autoclear: it goes with the unmount, and no kill between
    attaching and mounting can orphan it."""
    options = ",".join(filter(None, ("ro", "nosuid", "nodev", "noexec",
                                     NO_REPLAY.get(fstype))))
    offset, size = (part.offset, part.size) if part else (0, 0)
    with mounts.loop_over(fd, offset, size) as device:
        mounts.mount(device, mountpoint, fstype=fstype, options=options)


def mount_image(image: Path, mountpoint: Path, partition: int | str | None,
                boot_partition: int | str | None, cache_dir: Path, say: Say) -> Path:
    """Mount the image's root read-only where the lab exports it, and a /boot partition of
    its own on the root's /boot; return the raw file attached (the image, or its conversion).
    It stays mounted while the lab runs; release_image() undoes it. The image is opened
    once (a regular file); its format, headers, partitions and the loop devices are all read
    through that descriptor."""
    # The scenario's path may be a link (its author's); what it opens must be a regular file.
    with cache.open_regular(image, "the image", follow=True) as f:
        converted = raw_image(image, f.fileno(), cache_dir, say)
        if mounts.is_mounted(mountpoint):
            return converted or image
        if converted is None:
            _mount_disk(image, f.fileno(), mountpoint, partition, boot_partition)
            return image
    with converted.open("rb") as own:  # vlab's own file in its cache
        _mount_disk(image, own.fileno(), mountpoint, partition, boot_partition)
    return converted


def _mount_disk(image: Path, fd: int, mountpoint: Path, partition: int | str | None,
                boot_partition: int | str | None) -> None:
    raw = Path(f"/proc/self/fd/{fd}")
    root = boot = None
    fstype = disk.filesystem_of(raw)
    if fstype is None:
        try:
            root, boot = disk.choose(disk.partitions(raw), partition, boot_partition)
        except disk.DiskError as err:
            raise HostError(f"{image} {err}") from None
        fstype = root.fstype
    # choose() returns partitions that hold a filesystem; this keeps mypy sure of it
    if fstype is None or (boot is not None and boot.fstype is None):
        raise HostError(f"{image} holds no filesystem vlab can mount")
    mountpoint.mkdir(parents=True, exist_ok=True)
    _mount_partition(fd, fstype, root, mountpoint)
    if boot is not None:
        target = mountpoint / "boot"
        if target.is_symlink() or not target.is_dir():
            mounts.umount(mountpoint)
            raise HostError(f"{image}: partition {boot.number} is its /boot, but the root "
                            "partition has no /boot folder to mount it on")
        if boot.fstype == "vfat":
            _copy_vfat_boot(fd, boot, target)
        else:
            _mount_partition(fd, boot.fstype or "", boot, target)


def _copy_vfat_boot(fd: int, part: disk.Partition, target: Path) -> None:
    """A vfat /boot (an ESP or an XBOOTLDR partition, as image builders make it), read in
    userspace by mtools into a tmpfs of its size on the root's /boot: this machine kind's
    kernel has no vfat, and a userspace reader of an untrusted filesystem is the safer one.
    Read through the image's open descriptor; read-only once filled."""
    if run.which("mcopy") is None:
        raise MissingTool("mcopy (an image's vfat /boot partition)", "mtools")
    mounts.mount(mounts.BOOT_TMPFS, target, fstype="tmpfs",
                 options=f"size={part.size + (1 << 20)},mode=0755,nosuid,nodev,noexec")
    try:
        run.run(["mcopy", "-s", "-n", "-m", "-i", f"/proc/self/fd/{fd}@@{part.offset}",
                 "::/", f"{target}/"], env={"MTOOLS_SKIP_CHECK": "1"}, pass_fds=(fd,),
                hint=f"partition {part.number}, the image's /boot, is no vfat mtools reads")
        mounts.mount("none", target, options="remount,ro,nosuid,nodev,noexec")
    except BaseException:
        mounts.umount(target)
        raise


def release_image(attached: Path, mountpoint: Path, loop: str | None) -> list[str]:
    """Unmount the lab's image (its /boot first) and detach the loop device vlab attached for
    it, if it is still there and still backed by the file vlab attached (never another one
    backed by the same file)."""
    done = []
    for point in mounts.mounted_under(mountpoint):
        mounts.umount(point)
        done.append(f"unmounted {point}")
    if loop and loop in mounts.loops_of(attached):
        mounts.detach(loop)
        done.append(f"detached {loop}")
    if mountpoint.is_dir():
        mountpoint.rmdir()
    return done
