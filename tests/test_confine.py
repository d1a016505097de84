"""The NFS server's mount namespace (vlab/confine.py), for real: everything read-only but the
server's own folder and a /tmp of its own, the export read-only even where the export's
folder is in /tmp, and nothing of it on the machine. Needs root (mount namespaces); no boot.
That ganesha serves from it, and refuses a terminal's writes, is in test_ssh.py."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from vlab.confine import SETUP_FAILED, mount_points


def _inside(server: Path, export: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vlab.confine", str(server), "", str(export),
                           "--", "sh", "-c", script], capture_output=True, text=True,
                          timeout=30)


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
        echo ok > {server}/written && echo ok > /tmp/mine && ls /tmp
        cat {export}/file
        """)
    assert ran.returncode == 0, ran
    assert "WROTE" not in ran.stdout, ran.stdout
    assert ran.stderr.count("Read-only file system") == 4, ran.stderr
    assert f"{hidden}/new: Directory nonexistent" in ran.stderr  # under its own /tmp
    assert "as it was" in ran.stdout  # still readable
    assert (export / "file").read_text() == "as it was\n" and not (export / "new").exists()
    assert not (other / "new").exists() and not Path("/etc/vlab-confine-probe").exists()
    assert not (hidden / "new").exists()
    assert (server / "written").read_text() == "ok\n"
    assert (server / "tmp" / "mine").read_text() == "ok\n"  # its /tmp is its own
    assert not Path("/tmp/mine").exists()
    assert Path("/proc/self/mountinfo").read_text() == before


def test_a_namespace_that_cannot_be_set_up_runs_nothing(tmp_path: Path) -> None:
    ran = _inside(tmp_path / "missing", tmp_path, f"touch {tmp_path}/ran")
    assert ran.returncode == SETUP_FAILED and "vlab.confine:" in ran.stderr, ran
    assert not (tmp_path / "ran").exists()


def test_mount_points_decode_the_kernel_escapes() -> None:
    info = ("22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
            "40 22 0:30 / /media/My\\040Disk rw - vfat /dev/sdb1 rw\n"
            "41 22 0:31 / /srv/tab\\011and\\134slash rw - tmpfs none rw\n")
    assert mount_points(info) == ["/", "/media/My Disk", "/srv/tab\tand\\slash"]
