"""SSH into terminals, for real: dropbear in the busybox root, the host key pinned from the
console, the lab's key from the command line; vlab ssh and post-boot probes. Needs root."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT
from lxml import etree
from test_boot import VLAB, leftovers, plan_for, up, vlab

pytestmark = pytest.mark.boot

PROBES = "scenarios/probes.toml"


def test_vlab_ssh_runs_a_command_and_returns_its_status(lab_down) -> None:  # type: ignore[no-untyped-def]
    lab_down.append(PROBES)
    proc, rep = up(PROBES)
    assert proc.returncode == 0, proc.stderr
    for t in rep["terminals"]:
        assert [(c["name"], c["ok"]) for c in t["probes"]] == [
            ("root is NFS", True), ("tmp is writable", True)]
        assert t["probes"][0]["output"].strip() == "nfs"
    ran = vlab("ssh", PROBES, "t2", "--", "hostname; echo $HOME; exit 7")
    assert ran.returncode == 7, ran.stderr
    assert ran.stdout.split() == ["t2", "/run/root"]
    # The shared root stays read-only; root's home and the host key live in RAM.
    ro = vlab("ssh", PROBES, "t1", "--", "touch /etc/x")
    assert ro.returncode == 1 and "Read-only file system" in ro.stdout


def test_vlab_ssh_without_a_command_is_an_interactive_shell(lab_down) -> None:  # type: ignore[no-untyped-def]
    lab_down.append(PROBES)
    proc, _rep = up(PROBES)
    assert proc.returncode == 0, proc.stderr
    pid, fd = pty.fork()
    if pid == 0:  # the child: vlab ssh on a TTY
        os.chdir(ROOT)
        os.execv(VLAB[0], [*VLAB, "ssh", PROBES, "t1"])
    seen = b""
    typed = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not typed and b"vlab-terminal:" in seen:  # the remote shell's prompt
            os.write(fd, b"echo shell-$((6*7)); exit 5\n")
            typed = True
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            seen += data
    if not typed:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    assert b"shell-42" in seen, seen
    assert os.waitstatus_to_exitcode(status) == 5


def test_a_terminal_presenting_another_host_key_is_refused(lab_down) -> None:  # type: ignore[no-untyped-def]
    lab_down.append(PROBES)
    proc, rep = up(PROBES)
    assert proc.returncode == 0, proc.stderr
    # What vlab pinned now differs from what the terminal presents: as if another machine
    # answered on its address. (A key line as a terminal prints it, but of another key.)
    other = "AAAAC3NzaC1lZDI1NTE5AAAAIHtfti/vTSX9abzcbK41PzxYerywBEAonvxPoejSBwWQ"
    log = Path(rep["terminals"][0]["console_log"])
    with log.open("a") as f:
        f.write(f"VLAB-SSH-HOSTKEY t1 ssh-ed25519 {other}\n")
    refused = vlab("ssh", PROBES, "t1", "--", "true")
    assert refused.returncode == 3
    assert "presented SSH host key" in refused.stderr and "refused" in refused.stderr
    assert refused.stdout == ""


def test_a_failing_check_fails_vlab_check_with_its_output_in_junit(
    tmp_path: Path, lab_down  # type: ignore[no-untyped-def]
) -> None:
    path = tmp_path / "failing.toml"
    path.write_text((ROOT / PROBES).read_text().replace('name = "probes"', 'name = "failing"')
                    + '\n[[probe]]\nname = "root is writable"\nrun = "touch /vlab-check"\n')
    lab_down.append(str(path))
    plan = plan_for(str(path))
    junit = tmp_path / "out.xml"
    proc = vlab("check", str(path), "--junit", str(junit), "--json", timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "post-boot probe(s) failed: t1: root is writable, t2: root is writable" in proc.stderr
    rep = json.loads(proc.stdout)
    assert [t["verdict"] for t in rep["terminals"]] == ["ok", "ok"]
    suite = etree.parse(str(junit)).getroot()[0]
    assert suite.get("tests") == "8" and suite.get("failures") == "2"
    failed = [c for c in suite if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failed] == [
        ("vlab.failing.t1", "root is writable"), ("vlab.failing.t2", "root is writable")]
    assert "Read-only file system" in failed[0].find("failure").text  # type: ignore[union-attr]
    assert leftovers(plan) == []
    gone = vlab("ssh", str(path), "t1", "--", "true")  # its console log is still on disk
    assert gone.returncode == 3 and "t1 is not running; fix: vlab up" in gone.stderr


def test_a_terminal_that_mounts_its_root_read_write_still_cannot_write_it(
    tmp_path: Path, lab_down  # type: ignore[no-untyped-def]
) -> None:
    """To a terminal that mounts NFSv4.0 the export is RW in ganesha's configuration (its RO
    check would hang the client) and read-only in the server's kernel (vlab/serve/confine.py:
    every mount read-only in ganesha's mount namespace): the terminal mounts the root `rw`,
    writes where the root's own modes let anyone write, gets EROFS, and the folder is
    unchanged."""
    root = tmp_path / "root"
    busybox = plan_for("scenarios/tiny.toml").export_path
    subprocess.run(["cp", "-a", str(busybox), str(root)], check=True)
    (root / "open").mkdir(mode=0o1777)
    (root / "open").chmod(0o1777)  # past the umask: the root squashed to nobody may write
    (root / "open" / "file").write_text("as it was\n")
    (root / "open" / "file").chmod(0o666)
    path = tmp_path / "rw.toml"
    path.write_text(f'[lab]\nname = "rwroot"\n[root]\nsource = "dir"\npath = "{root}"\n'
                    '[kernel]\nsource = "debian"\n'
                    '[[terminal]]\nname = "t1"\ncmdline = "rootflags=vers=4.0,rw"\n')
    lab_down.append(str(path))
    proc, rep = up(str(path))
    assert proc.returncode == 0, proc.stderr
    (t,) = rep["terminals"]
    assert t["proof"]["options"].startswith("rw,"), t["proof"]
    tried = vlab("ssh", str(path), "t1", "--",
                 "grep -E '^[^ ]+ / nfs4? rw,' /proc/mounts && touch /open/new;"
                 " echo x > /open/file")
    assert tried.returncode == 1, tried
    assert tried.stdout.count("Read-only file system") == 2, tried
    assert vlab("down", str(path)).returncode == 0
    assert sorted(p.name for p in (root / "open").iterdir()) == ["file"]
    assert (root / "open" / "file").read_text() == "as it was\n"
    assert str(root) not in Path("/proc/self/mountinfo").read_text()  # the bind stayed inside


def test_a_probe_that_prints_without_end_is_cut_and_vlab_stays_bounded(
    tmp_path: Path, lab_down  # type: ignore[no-untyped-def]
) -> None:
    """A guest's output is its own text: a probe printing 64 MiB costs vlab 1 MiB of it, the
    probe fails saying so, and vlab check ends."""
    path = tmp_path / "flood.toml"
    path.write_text('[lab]\nname = "flood"\n[[terminal]]\nname = "t1"\n'
                    '[[probe]]\nname = "floods"\nrun = "yes | head -c 67108864"\n')
    lab_down.append(str(path))
    plan = plan_for(str(path))
    proc = vlab("check", str(path), "--json", timeout=600)
    assert proc.returncode == 1, proc.stderr
    (t,) = json.loads(proc.stdout)["terminals"]
    (probe,) = t["probes"]
    assert not probe["ok"] and probe["status"] == -1
    assert probe["output"].endswith("(output cut at 1048576 bytes)")
    assert len(probe["output"]) < (1 << 20) + 100
    assert leftovers(plan) == []
