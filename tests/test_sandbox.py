"""The root's own initrd builder runs in vlab's sandbox: a hostile `mkinitramfs` in a root
cannot read host files, write outside its scratch folder, see or reach host processes, or
chroot its way out. Needs root (namespaces, mounts); no boot, so it is not marked `boot`.
That a real builder still works in it is proven by the Debian boots in test_roots.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vlab import scenario
from vlab.build import builders, busybox
from vlab.build.kernel import Kernel
from vlab.errors import CommandError
from vlab.plan.lab import Dirs, LabPlan
from vlab.verbs.claim import plan_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")

HOSTILE = """#!/bin/sh
out=/tmp/vlab-initrd.img
{{
cat {secret} && echo LEAK-read-host-file
echo evil > {secret} && echo LEAK-wrote-host-file
touch /etc/evil && echo LEAK-wrote-the-root
[ -e /proc/{host_pid} ] && echo LEAK-sees-host-process
kill -0 {host_pid} && echo LEAK-signals-host-process
echo "processes: $(ls /proc | grep -c '^[0-9]')"
chroot /proc/1/root /bin/cat {secret} && echo LEAK-chroot-escape
mkdir -p /tmp/x && chroot /tmp/x /bin/true; cd / && echo "root: $(ls / | tr '\\n' ' ')"
mknod /tmp/disk b 8 0 && head -c 1 /tmp/disk > /dev/null && echo LEAK-raw-disk
mknod /dev/mem2 c 1 1 && head -c 1 /dev/mem2 > /dev/null && echo LEAK-dev-mem
echo x > /sys/kernel/uevent_helper && echo LEAK-wrote-sys
[ -e /proc/sys/kernel/core_pattern ] && echo '|/bin/sh' > /proc/sys/kernel/core_pattern \\
  && echo LEAK-wrote-proc-sys
[ -e /proc/sysrq-trigger ] && echo h > /proc/sysrq-trigger && echo LEAK-sysrq
mount -t tmpfs none /tmp/x && echo LEAK-mounted
ip link set lo up 2>/dev/null; ip link | grep -v '^ ' | grep -vc ': lo:' | sed 's/^/other-links: /'
echo null-works > /dev/null && echo dev-null-ok
}} > $out 2>&1
"""


def _hostile_root(top: Path, secret: Path) -> Path:
    root = top / "root"
    for d in ("bin", "usr/sbin", "etc", "dev", "proc", "sys", "tmp", "run", "var/tmp",
              "var/lock", "boot", "lib/modules/6.1.0-vlab"):
        (root / d).mkdir(parents=True)
    shutil.copy2(busybox.binary(), root / "bin/busybox")
    for applet in ("sh", "cat", "ls", "touch", "grep", "kill", "chroot", "mkdir", "tr",
                   "mknod", "head", "mount", "ip", "sed", "true", "echo"):
        (root / "bin" / applet).symlink_to("busybox")
    program = root / "usr/sbin/mkinitramfs"
    program.write_text(HOSTILE.format(secret=secret, host_pid=os.getpid()))
    program.chmod(0o755)
    (root / "boot/vmlinuz-6.1.0-vlab").write_bytes(b"not a kernel")
    (root / "lib/modules/6.1.0-vlab/modules.dep").write_text("")
    return root


def _a_root(tmp_path: Path, builder: str | None = None) -> Path:
    """A root like the hostile one (its host secret of no interest), its mkinitramfs
    `builder` if given."""
    secret = tmp_path / "host-secret"
    secret.write_text("x\n")
    root = _hostile_root(tmp_path, secret)
    if builder is not None:
        (root / "usr/sbin/mkinitramfs").write_text(builder)
    return root


def _plan(tmp_path: Path, root: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "hostile.toml"
    path.write_text(f'[lab]\nname = "hostile"\nnfs_version = "3"\n'
                    f'[root]\nsource = "dir"\npath = "{root}"\n'
                    f'[kernel]\nsource = "root"\n[initrd]\nbuilder = "initramfs-tools"\n'
                    f'[[terminal]]\nname = "t1"\n')
    return plan_for(scenario.load(path), Dirs(cache=tmp_path / "cache",
                                               state=tmp_path / "state"))


def _build(plan: LabPlan, root: Path, kernel: Kernel, cache: Path) -> Path:
    return builders.build(plan, root, kernel, builders.output(plan, root, kernel, cache))


def test_a_hostile_builder_reaches_nothing_of_the_host(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("host secret\n")
    root = _hostile_root(tmp_path, secret)
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    kernel = Kernel("6.1.0-vlab", root / "boot/vmlinuz-6.1.0-vlab",
                    root / "lib/modules/6.1.0-vlab")
    built = _build(_plan(tmp_path, root), root, kernel, tmp_path / "cache")
    report = built.read_text()
    assert "LEAK" not in report, report
    assert "dev-null-ok" in report, report  # the builder's view still works
    assert "processes: " in report and int(report.split("processes: ")[1].split()[0]) < 10
    assert "other-links: 0" in report, report  # a network namespace of its own
    assert secret.read_text() == "host secret\n"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
    # Nothing of the build is left: no scratch folder, no mount.
    assert not list((tmp_path / "cache").rglob(".scratch*"))
    assert str(root) not in Path("/proc/self/mounts").read_text()


def test_a_builder_whose_output_is_a_symlink_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("host secret\n")
    root = _hostile_root(tmp_path, secret)
    (root / "usr/sbin/mkinitramfs").write_text(
        f"#!/bin/sh\nln -s {secret} /tmp/vlab-initrd.img\n")
    kernel = Kernel("6.1.0-vlab", root / "boot/vmlinuz-6.1.0-vlab",
                    root / "lib/modules/6.1.0-vlab")
    # The sandbox copies its output out of the builder's tmpfs: a symlink is refused there.
    with pytest.raises(CommandError, match="vlab-initrd.img is a symlink, not a regular file"):
        _build(_plan(tmp_path, root), root, kernel, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "initrds").glob("*.img"))


def test_a_changed_root_gets_a_new_initrd_the_same_root_the_cached_one(tmp_path: Path) -> None:
    """Another image at the same mount point, or a package upgraded in a dir root, is
    another initrd: the cache key is the root's tree, not its path."""
    root = _a_root(tmp_path)
    kernel = Kernel("6.1.0-vlab", root / "boot/vmlinuz-6.1.0-vlab",
                    root / "lib/modules/6.1.0-vlab")
    plan = _plan(tmp_path, root)
    first = _build(plan, root, kernel, tmp_path / "cache")
    assert _build(plan, root, kernel, tmp_path / "cache") == first
    (root / "etc/initramfs-hook-of-a-newer-package").write_text("changed\n")
    second = _build(plan, root, kernel, tmp_path / "cache")
    assert second != first
    (root / "etc/an-empty-folder").mkdir()  # nothing in it, but the tree is another
    assert _build(plan, root, kernel, tmp_path / "cache") not in (first, second)


def test_only_an_image_boot_partition_mounted_in_the_root_reaches_the_builder(
        tmp_path: Path) -> None:
    """A tree's own mounts (here a tmpfs holding a host secret) stay out of the builder's
    view; a read-only loop mount on /boot (an image's /boot partition) is in it, read-only."""
    import subprocess

    root = _a_root(tmp_path)
    (root / "mnt/host").mkdir(parents=True)
    boot_fs = tmp_path / "boot.ext4"
    (tmp_path / "boot-tree").mkdir()
    (tmp_path / "boot-tree/from-partition").write_text("boot partition\n")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tmp_path / "boot-tree"), str(boot_fs),
                    "8M"], check=True)
    program = root / "usr/sbin/mkinitramfs"
    program.write_text("#!/bin/sh\n{ cat /mnt/host/data && echo LEAK-tree-mount\n"
                       "cat /boot/from-partition\ntouch /boot/x && echo LEAK-boot-writable\n"
                       "} > /tmp/vlab-initrd.img 2>&1\nexit 0\n")
    subprocess.run(["mount", "-t", "tmpfs", "none", str(root / "mnt/host")], check=True)
    try:
        (root / "mnt/host/data").write_text("host data\n")
        subprocess.run(["mount", "-o", "loop,ro", str(boot_fs), str(root / "boot")], check=True)
        try:
            kernel = Kernel("6.1.0-vlab", root / "mnt/host/data",
                            root / "lib/modules/6.1.0-vlab")
            report = _build(_plan(tmp_path, root), root, kernel, tmp_path / "cache").read_text()
        finally:
            subprocess.run(["umount", str(root / "boot")], check=True)
    finally:
        subprocess.run(["umount", str(root / "mnt/host")], check=True)
    assert "LEAK" not in report, report
    assert "boot partition" in report, report


def test_a_builder_program_is_denied_every_way_out_and_the_build_says_what(
        tmp_path: Path) -> None:
    """An image whose builder is a static program trying, in turn, what escaped vlab's old
    sandbox (issue 27): open_by_handle_at of inode 2 (the root of the filesystem its /tmp
    lies on), name_to_handle_at, ptrace of a host process, mount, a new user namespace,
    writing outside its scratch, reading a host file, chroot. Each is denied, the build
    fails, and vlab's message carries the builder's own words naming each denial."""
    import subprocess

    secret = tmp_path / "host-secret"
    secret.write_text("host secret\n")
    root = _hostile_root(tmp_path, secret)
    program = root / "usr/sbin/mkinitramfs"
    program.unlink()
    subprocess.run(["gcc", "-static", "-O1", "-o", str(program),
                    str(Path(__file__).parent / "data/hostile-builder.c")], check=True)
    wrapper = root / "usr/sbin/mkinitramfs-hostile"
    program.rename(wrapper)
    program.write_text(f"#!/bin/sh\nexec /usr/sbin/mkinitramfs-hostile {os.getpid()} "
                       f"{secret}\n")
    program.chmod(0o755)
    kernel = Kernel("6.1.0-vlab", root / "boot/vmlinuz-6.1.0-vlab",
                    root / "lib/modules/6.1.0-vlab")
    with pytest.raises(CommandError) as err:
        _build(_plan(tmp_path, root), root, kernel, tmp_path / "cache")
    message = err.value.message()
    assert "LEAK" not in message, message
    for denied in ("open_by_handle_at: Operation not permitted",
                   "name_to_handle_at: Operation not permitted",
                   "ptrace: Operation not permitted", "mount: Operation not permitted",
                   "unshare: Operation not permitted",
                   "write outside scratch: Read-only file system",
                   "read host file: No such file or directory",
                   "chroot: Operation not permitted"):
        assert f"denied {denied}" in message, message
    assert secret.read_text() == "host secret\n"
    assert not (root / "etc/vlab-evil").exists()
    assert not list((tmp_path / "cache" / "initrds").glob("*.img"))


def test_the_builder_runs_as_an_unprivileged_uid_with_no_capability(tmp_path: Path) -> None:
    """Root inside its user namespace, SANDBOX_UID on the machine, every capability set
    empty, no_new_privs, seccomp in filter mode; what it writes lands in its /tmp only."""
    from vlab.build import sandbox

    root = _a_root(tmp_path,
        "#!/bin/sh\n{ id -u; cat /proc/self/uid_map; grep -E '^(Cap|NoNewPrivs|Seccomp:)' "
        "/proc/self/status; } > /tmp/vlab-initrd.img\n")
    (root / "bin/id").symlink_to("busybox")
    kernel = Kernel("6.1.0-vlab", root / "boot/vmlinuz-6.1.0-vlab",
                    root / "lib/modules/6.1.0-vlab")
    report = _build(_plan(tmp_path, root), root, kernel, tmp_path / "cache").read_text()
    lines = report.split()
    assert lines[0] == "0", report
    assert lines[1:4] == ["0", str(sandbox.SANDBOX_UID), "1"], report
    for cap in ("CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"):
        assert lines[lines.index(cap) + 1] == "0000000000000000", report
    assert lines[lines.index("NoNewPrivs:") + 1] == "1", report
    assert lines[lines.index("Seccomp:") + 1] == "2", report


def test_an_image_root_mounted_noexec_still_runs_its_builder_in_the_sandbox(
        tmp_path: Path) -> None:
    """vlab mounts an image ro,nosuid,nodev,noexec on the machine; its builder runs only in
    the sandbox's own view of it (exec allowed there, still read-only, nosuid, nodev)."""
    import subprocess

    tree = _a_root(tmp_path,
        "#!/bin/sh\ngrep ' / ' /proc/self/mounts > /tmp/vlab-initrd.img\n")
    image = tmp_path / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "32M"], check=True)
    root = tmp_path / "mounted"
    root.mkdir()
    subprocess.run(["mount", "-o", "loop,ro,nosuid,nodev,noexec", str(image), str(root)],
                   check=True)
    try:
        kernel = Kernel("6.1.0-vlab", root / "boot/vmlinuz-6.1.0-vlab",
                        root / "lib/modules/6.1.0-vlab")
        report = _build(_plan(tmp_path, root), root, kernel, tmp_path / "cache").read_text()
    finally:
        subprocess.run(["umount", str(root)], check=True)
    options = set(report.split()[3].split(","))
    assert {"ro", "nosuid", "nodev"} <= options and "noexec" not in options, report


def test_the_same_tree_at_another_path_is_the_same_initrd(tmp_path: Path) -> None:
    """Issue 27: the key hashed the paths under the lab's mount point, so the same image
    booted in a second lab built its initrd again. It is the tree's content, relative."""
    root = _a_root(tmp_path)
    other = tmp_path / "second-lab-mount"
    shutil.copytree(root, other, symlinks=True)  # names, sizes, modes and times kept
    kernel = Kernel("6.1.0-vlab", root / "boot/vmlinuz-6.1.0-vlab",
                    root / "lib/modules/6.1.0-vlab")
    plan = _plan(tmp_path, root)
    assert (builders.output(plan, root, kernel, tmp_path / "cache")
            == builders.output(plan, other, kernel, tmp_path / "cache"))


def test_a_builder_that_prints_without_end_costs_bounded_memory(tmp_path: Path) -> None:
    """Issue 27, finding 10: vlab kept all of a builder's output. 128 MiB of invalid UTF-8
    on stderr, then a failure: vlab's message has the last lines, its memory did not grow
    by the output, and the bytes that are not UTF-8 are no crash."""
    import resource

    from vlab import run

    root = _a_root(tmp_path)
    program = root / "usr/sbin/mkinitramfs"
    kernel = Kernel("6.1.0-vlab", root / "boot/vmlinuz-6.1.0-vlab",
                    root / "lib/modules/6.1.0-vlab")
    for size in (1 << 20, 128 << 20):  # a small run first: the imports are not the output
        program.write_text(f"#!/bin/sh\nhead -c {size} /dev/zero | tr '\\0' '\\377' >&2\n"
                           "echo the-last-line >&2\nexit 3\n")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(CommandError) as err:
            _build(_plan(tmp_path, root), root, kernel, tmp_path / "cache")
    grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert "the-last-line" in err.value.message()
    assert "\ufffd" * 1000 in err.value.stderr  # the 0xff bytes, shown replaced
    assert err.value.stderr.startswith("[... the first part of the output is left out]")
    assert len(err.value.stderr) <= run.OUTPUT_MAX + 100
    assert grew_kib < 48 << 10, grew_kib  # of 128 MiB printed


def test_qemu_img_parses_an_image_with_no_capability_seeing_only_usr(tmp_path: Path) -> None:
    """The machine's parser of an image's bytes (sandbox.parser_argv, what converts a qcow2):
    it reads the descriptor vlab hands it (the image may be 0600) and writes its folder, and
    nothing else: no host file, no write to /usr, no capability, seccomp on."""
    from vlab import run
    from vlab.build import sandbox

    secret = tmp_path / "host-secret"
    secret.write_text("host secret\n")
    image = tmp_path / "image"
    image.write_text("the image's bytes\n")
    image.chmod(0o600)
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    script = (f"cat /dev/fd/{{fd}}; cat {secret} && echo LEAK-host-file; "
              "cat /etc/hostname && echo LEAK-etc; ls /root && echo LEAK-root; "
              "touch /usr/evil && echo LEAK-usr; unshare -r true && echo LEAK-unshare; "
              "echo made > /out/made; grep -E '^(Cap...|NoNewPrivs|Seccomp):' /proc/self/status")
    fd = os.open(image, os.O_RDONLY)
    seccomp_fd = sandbox.seccomp_filter()
    try:
        done = run.run(sandbox.parser_argv(["sh", "-c", script.format(fd=fd)], out=out,
                                           seccomp_fd=seccomp_fd), pass_fds=(fd, seccomp_fd))
    finally:
        os.close(fd)
        os.close(seccomp_fd)
    assert "LEAK" not in done.stdout, done.stdout
    lines = done.stdout.split()
    assert done.stdout.startswith("the image's bytes\n"), done.stdout
    for cap in ("CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"):
        assert lines[lines.index(cap) + 1] == "0000000000000000", done.stdout
    assert lines[lines.index("NoNewPrivs:") + 1] == "1", done.stdout
    assert lines[lines.index("Seccomp:") + 1] == "2", done.stdout
    assert (out / "made").read_text() == "made\n"
    assert not Path("/usr/evil").exists()


def test_escapes_a_failing_builder_prints_reach_the_operator_inert(tmp_path: Path) -> None:
    """The builder's stderr is in the error `vlab up` prints (cli.main): an OSC 52 clipboard
    write, a terminal reset, a C1 CSI and a bidirectional override are shown, not sent."""
    import subprocess
    import sys

    root = _a_root(tmp_path,
        "#!/bin/sh\nprintf 'E: \\033]52;c;ZXZpbA==\\007 \\033c \\302\\2332J \\342\\200\\256evil"
        "\\033[31m\\n' >&2\nexit 1\n")
    scenario_file = _plan(tmp_path, root).scenario
    env = {**os.environ, "VLAB_STATE_DIR": str(tmp_path / "state"),
           "VLAB_CACHE_DIR": str(tmp_path / "cache")}
    ran = subprocess.run([sys.executable, "-m", "vlab", "up", str(scenario_file)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 3, ran.stderr
    assert "mkinitramfs" in ran.stderr, ran.stderr
    assert not any(c in ran.stderr for c in "\x1b\x07\x9b\u202e"), repr(ran.stderr)
    assert "\\x1b]52;c;ZXZpbA==\\x07" in ran.stderr and "\\u202eevil" in ran.stderr, ran.stderr
