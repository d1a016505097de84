"""The NFS server's mount namespace (vlab/serve/confine.py), for real: everything read-only but the
server's own folder and a /tmp of its own, the export read-only even where the export's
folder is in /tmp, and nothing of it on the machine. Needs root (mount namespaces); no boot.
That ganesha serves from it, and refuses a terminal's writes, is in test_ssh.py."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from vlab.serve.confine import SETUP_FAILED, mount_points


def _inside(server: Path, export: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vlab.serve.confine", str(server), "",
                           str(export), "--", "sh", "-c", script], capture_output=True,
                          text=True, timeout=30)


def test_only_the_server_folder_and_its_own_tmp_are_writable(tmp_path: Path) -> None:
    server, export, hidden = tmp_path / "srv", tmp_path / "export", tmp_path / "hidden"
    for folder in (server, export, hidden):
        folder.mkdir()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as elsewhere:
        _only_its_own(server, export, hidden, Path(elsewhere))


def _only_its_own(server: Path, export: Path, hidden: Path, other: Path) -> None:
    (export / "file").write_text("as it was\n")
    before = Path("/proc/self/mountinfo").read_text()
    # tmp_path is in /tmp: the export and the server folder are where /tmp is replaced.
    ran = _inside(server, export, f"""
        for f in {export}/new {export}/file {other}/new /etc/vlab-confine-probe \
                 {hidden}/new; do
            if echo x > $f; then echo "WROTE $f"; fi
        done
        echo ok > {server}/written && ls /tmp
        echo ok > /tmp/mine || echo TMP-READ-ONLY
        cat {export}/file
        """)
    assert ran.returncode == 0, ran
    assert "WROTE" not in ran.stdout, ran.stdout
    assert ran.stderr.count("Read-only file system") == 5, ran.stderr
    assert "TMP-READ-ONLY" in ran.stdout  # ganesha's own /tmp, read-only: no OFD lock test
    assert f"{hidden}/new: Directory nonexistent" in ran.stderr  # under its own /tmp
    assert "as it was" in ran.stdout  # still readable
    assert (export / "file").read_text() == "as it was\n" and not (export / "new").exists()
    assert not (other / "new").exists() and not Path("/etc/vlab-confine-probe").exists()
    assert not (hidden / "new").exists()
    assert (server / "written").read_text() == "ok\n"
    assert (server / "tmp").is_dir() and not (server / "tmp" / "mine").exists()
    assert not Path("/tmp/mine").exists()
    assert Path("/proc/self/mountinfo").read_text() == before


def test_a_namespace_that_cannot_be_set_up_runs_nothing(tmp_path: Path) -> None:
    ran = _inside(tmp_path / "missing", tmp_path, f"touch {tmp_path}/ran")
    assert ran.returncode == SETUP_FAILED and "vlab.serve.confine:" in ran.stderr, ran
    assert not (tmp_path / "ran").exists()


def test_mount_points_decode_the_kernel_escapes() -> None:
    info = ("22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
            "40 22 0:30 / /media/My\\040Disk rw - vfat /dev/sdb1 rw\n"
            "41 22 0:31 / /srv/tab\\011and\\134slash rw - tmpfs none rw\n")
    assert mount_points(info) == ["/", "/media/My Disk", "/srv/tab\tand\\slash"]


def _mount_of(path: Path, mountinfo: str) -> tuple[str, str]:
    """(options, filesystem type) of the last mount at path in a mountinfo text."""
    found = ("", "")
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 6 and fields[4] == str(path):
            found = (fields[5], fields[fields.index("-") + 1])
    return found


def test_the_read_only_remount_keeps_nosuid_nodev_noexec(tmp_path: Path) -> None:
    """Issue 27: remounting a bind read-only dropped the export's nosuid, nodev, noexec."""
    server, export = tmp_path / "srv", tmp_path / "export"
    server.mkdir()
    export.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nosuid,nodev,noexec", "x", str(export)],
                   check=True)
    try:
        ran = _inside(server, export, "cat /proc/self/mountinfo")
    finally:
        subprocess.run(["umount", str(export)], check=True)
    assert ran.returncode == 0, ran
    options, _fstype = _mount_of(export, ran.stdout)
    assert set(options.split(",")) >= {"ro", "nosuid", "nodev", "noexec"}, options


def test_the_export_image_is_mounted_over_the_root_in_its_namespace_only(
        tmp_path: Path) -> None:
    """With --image the export is the image's own filesystem (nosuid, nodev, noexec), its
    files where the root's were; the machine sees no mount, and no loop device stays."""
    server, export, tree = tmp_path / "srv", tmp_path / "root", tmp_path / "tree"
    for folder in (server, export, tree):
        folder.mkdir()
    (export / "on-the-host").write_text("the folder itself\n")
    (tree / "in-the-image").write_text("the image\n")
    image = tmp_path / "export.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-d", str(tree),
                    str(image), "8M"], check=True)
    before = Path("/proc/self/mountinfo").read_text()
    ran = subprocess.run([sys.executable, "-m", "vlab.serve.confine", "--image", str(image),
                          str(server), "", str(export), "--", "sh", "-c",
                          f"ls {export}; cat /proc/self/mountinfo"],
                         capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran
    assert "in-the-image" in ran.stdout and "on-the-host" not in ran.stdout, ran.stdout
    options, fstype = _mount_of(export, ran.stdout)
    assert fstype == "ext4" and set(options.split(",")) >= {"nosuid", "nodev", "noexec"}
    assert Path("/proc/self/mountinfo").read_text() == before
    for _ in range(50):  # the kernel frees an autoclear loop device as the mount goes
        attached = subprocess.run(["losetup", "-j", str(image)], capture_output=True,
                                  text=True).stdout
        if not attached:
            break
        import time
        time.sleep(0.1)
    assert attached == ""


def test_what_it_runs_has_only_the_capabilities_ganesha_needs(tmp_path: Path) -> None:
    """Issue 27: ganesha kept every capability. What confine executes has GANESHA_CAPS in
    its bounding set and nothing else: no sys_admin to remount the export read-write."""
    from vlab.serve.confine import GANESHA_CAPS

    server, export = tmp_path / "srv", tmp_path / "export"
    server.mkdir()
    export.mkdir()
    ran = subprocess.run([sys.executable, "-m", "vlab.serve.confine", str(server), "", str(export),
                          "--", "sh", "-c", "grep CapBnd /proc/self/status; "
                          f"mount -o remount,rw {export} && echo REMOUNTED"],
                         capture_output=True, text=True, timeout=30)
    bounding = int(ran.stdout.split()[1], 16)
    assert bounding == sum(1 << cap for cap in GANESHA_CAPS), ran.stdout
    assert "REMOUNTED" not in ran.stdout


def test_the_server_is_process_1_of_a_pid_namespace_and_sees_no_other(tmp_path: Path) -> None:
    """Issue 27: ganesha shared the machine's PID namespace. What confine executes is process
    1 of a namespace of its own, with a /proc of it: no process of the machine's is seen."""
    import os

    server, export = tmp_path / "srv", tmp_path / "export"
    server.mkdir()
    export.mkdir()
    ran = subprocess.run([sys.executable, "-m", "vlab.serve.confine", str(server), "", str(export),
                          "--", "sh", "-c", f"echo $$; ls /proc | grep -c '^[0-9]'; "
                          f"[ -e /proc/{os.getpid()} ] && echo LEAK; exit 7"],
                         capture_output=True, text=True, timeout=30)
    assert ran.returncode == 7, ran  # the exit status is the program's
    pid, seen = ran.stdout.split()[:2]
    assert pid == "1" and int(seen) <= 3 and "LEAK" not in ran.stdout, ran.stdout


def test_with_a_pid_file_the_server_runs_on_and_its_pid_is_the_machines(tmp_path: Path) -> None:
    """How vlab starts ganesha: confine returns once the server runs, and the pid file holds
    its pid as the machine sees it, by which vlab follows and stops it."""
    import os

    from vlab import procs

    server, export, pid_file = tmp_path / "srv", tmp_path / "export", tmp_path / "server.pid"
    server.mkdir()
    export.mkdir()
    with (tmp_path / "log").open("w") as log:  # as vlab does: the server keeps its output
        ran = subprocess.run([sys.executable, "-m", "vlab.serve.confine", "--pid-file",
                              str(pid_file), str(server), "", str(export), "--", "sleep", "60"],
                             stdout=log, stderr=subprocess.STDOUT, timeout=30)
    assert ran.returncode == 0, (tmp_path / "log").read_text()
    pid = procs.read_pid(pid_file, "sleep", "60")
    assert pid is not None, pid_file.read_text()
    try:
        assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    finally:
        procs.stop(pid)
    assert not procs.alive(pid)
    bad = subprocess.run([sys.executable, "-m", "vlab.serve.confine", "--pid-file", str(pid_file),
                          str(server), "", str(export), "--", "/no/such/program"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == SETUP_FAILED and "/no/such/program" in bad.stderr, bad


def test_the_export_image_and_the_cache_it_lies_in_are_read_only_there(tmp_path: Path) -> None:
    """Issue 27: the export image was mounted read-write for ganesha outside labs with
    NFSv4.0 terminals, and only their ganesha saw the machine read-only. Now every lab's:
    the image, its folder (vlab's cache) and the image file itself cannot be written."""
    server, export, tree = tmp_path / "srv", tmp_path / "root", tmp_path / "tree"
    for folder in (server, export, tree):
        folder.mkdir()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as cache:
        image = Path(cache) / "export.ext4"
        subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-d", str(tree),
                        str(image), "8M"], check=True)
        ran = subprocess.run([sys.executable, "-m", "vlab.serve.confine", "--image", str(image),
                              str(server), "", str(export), "--", "sh", "-c",
                              f"echo x > {export}/locked && echo WROTE-EXPORT; "
                              f"echo x > {cache}/x && echo WROTE-CACHE; "
                              f"echo x >> {image} && echo WROTE-IMAGE; "
                              f"grep ' {export} ' /proc/self/mountinfo"],
                             capture_output=True, text=True, timeout=30)
        assert not Path(cache, "x").exists()
    assert ran.returncode == 0, ran
    assert "WROTE" not in ran.stdout, ran.stdout
    assert ran.stderr.count("Read-only file system") == 3, ran.stderr
    options, fstype = _mount_of(export, ran.stdout)
    assert fstype == "ext4" and set(options.split(",")) >= {"ro", "nosuid", "nodev", "noexec"}


def test_the_watcher_writes_when_the_server_ended_unless_vlab_stopped_it(tmp_path: Path) -> None:
    """`vlab status` says since when a lab's server is gone: a server killed by anyone has
    its end time written beside its pid file; one vlab stops (pid file removed first) none."""
    import os
    import signal
    import time

    from vlab import procs
    from vlab.serve.confine import ended_file

    server, export, pid_file = tmp_path / "srv", tmp_path / "export", tmp_path / "server.pid"
    server.mkdir()
    export.mkdir()
    for stopped_by_vlab in (False, True):
        with (tmp_path / "log").open("w") as log:
            ran = subprocess.run([sys.executable, "-m", "vlab.serve.confine", "--pid-file",
                                  str(pid_file), str(server), "", str(export), "--", "sleep",
                                  "60"], stdout=log, stderr=subprocess.STDOUT, timeout=30)
        assert ran.returncode == 0, (tmp_path / "log").read_text()
        pid = procs.read_pid(pid_file, "sleep", "60")
        assert pid is not None
        if stopped_by_vlab:
            pid_file.unlink()
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + (1 if stopped_by_vlab else 10)
        while not ended_file(pid_file).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if stopped_by_vlab:
            assert not ended_file(pid_file).exists()
        else:
            assert killed - 1 < float(ended_file(pid_file).read_text()) < killed + 5
            ended_file(pid_file).unlink()
