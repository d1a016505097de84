"""What vlab stops or removes is vlab's own: a pid file's number that now belongs to another
process, a `tail -f` of a console log, a persistent libvirt network named vlab-*. No boot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest
from conftest import ROOT
from test_boot import vlab

from vlab import procs
from vlab.nodes import virt
from vlab.serve import nfsserver

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    """argv running: Popen returns once it forked, and until the child has exec'd, its
    /proc cmdline is still this Python's (seen on a loaded CI machine)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while procs.arguments(proc.pid)[:1] != argv[:1] and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def test_a_pid_file_whose_number_is_now_another_process_is_not_vlabs(tmp_path: Path) -> None:
    other = _start(["sleep", "300"])
    try:
        pid_file = tmp_path / "labs/old/nfs/ganesha.pid"
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(f"{other.pid}\n")  # as after a reboot: the number is reused
        assert nfsserver.server_pid(pid_file) is None
        assert procs.read_pid(pid_file, "rpcbind") is None
        assert procs.read_pid(pid_file, "sleep") == other.pid
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_gc_stops_only_vlabs_own_processes(tmp_path: Path) -> None:
    labs = tmp_path / "state/labs"
    log = labs / "gone/console/t1.log"
    log.parent.mkdir(parents=True)
    log.write_text("a console\n")
    fake_server = tmp_path / "bin/ganesha.nfsd"  # a lab's NFS server whose state is gone
    fake_server.parent.mkdir()
    shutil.copy("/usr/bin/tail", fake_server)  # runs on, with vlab's arguments
    conf = labs / "gone/nfs/ganesha.conf"
    conf.parent.mkdir()
    conf.write_text("")
    server = _start([str(fake_server), "-f", str(conf)])
    tail = _start(["tail", "-f", str(log)])
    tar = _start(["sh", "-c", f"sleep 300; tar cf /dev/null {labs}/gone", "-", str(labs)])
    # The NFS namespace of a lab this state folder knows nothing of, whose server's folder
    # is another state folder's (another VLAB_STATE_DIR's lab, up): not this gc's to remove.
    # And an empty one named for the gone lab: this gc's.
    for ns in ("vlab-nfs-elsewhere", "vlab-nfs-gone"):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    elsewhere = tmp_path / "other-state/labs/elsewhere/nfs/ganesha.conf"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_text("")
    theirs = subprocess.Popen(["ip", "netns", "exec", "vlab-nfs-elsewhere", str(fake_server),
                               "-f", str(elsewhere)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while procs.arguments(theirs.pid)[:1] != [str(fake_server)] and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    try:
        env = {**os.environ, "VLAB_STATE_DIR": str(tmp_path / "state"),
               "VLAB_CACHE_DIR": str(tmp_path / "cache")}
        # In a mount namespace of its own where no libvirtd answers: this gc's state folder
        # is empty, so every lab of a real lab host would look orphaned to it.
        gc = subprocess.run(["unshare", "--mount", "--", "sh", "-c",
                             'mkdir -p /run/libvirt && mount -t tmpfs none /run/libvirt '
                             '&& exec "$0" -m vlab gc', sys.executable], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
        assert gc.returncode == 0, gc.stderr
        server.wait(timeout=10)
        assert f"process {server.pid} (lab gone)" in gc.stderr
        assert tail.poll() is None and tar.poll() is None, gc.stderr
        assert "network namespace vlab-nfs-gone" in gc.stderr, gc.stderr
        assert theirs.poll() is None and Path("/run/netns/vlab-nfs-elsewhere").exists()
        assert "elsewhere" not in gc.stderr, gc.stderr
    finally:
        for p in (server, tail, tar, theirs):
            p.kill()
            p.wait()
        for ns in ("vlab-nfs-elsewhere", "vlab-nfs-gone"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_persistent_network_named_vlab_is_not_a_lab_network() -> None:
    conn = virt.connect("test:///default")
    try:
        theirs = conn.networkDefineXML("<network><name>vlab-theirs</name><bridge name='virbr9'/>"
                                       "<ip address='192.168.150.1' netmask='255.255.255.0'/>"
                                       "</network>")
        theirs.create()
        conn.networkCreateXML("<network><name>vlab-ours</name><bridge name='vlab0123abcd'/>"
                              "<ip address='192.168.151.1' netmask='255.255.255.0'/></network>")
        assert virt.lab_networks(conn) == ["vlab-ours"]
    finally:
        for name in ("vlab-theirs", "vlab-ours"):
            try:
                net = conn.networkLookupByName(name)
                net.destroy()
                if net.isPersistent():
                    net.undefine()
            except libvirt.libvirtError:
                pass
        virt.close(conn)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "VLAB_STATE_DIR": str(tmp_path / "state"),
            "VLAB_CACHE_DIR": str(tmp_path / "cache")}


def test_pxe_check_of_a_lab_that_is_up_is_refused_and_its_state_kept(tmp_path: Path) -> None:
    lab_dir = tmp_path / "state/labs/site"
    lab_dir.mkdir(parents=True)
    recorded = '{"status": "up", "domains": ["vlab-site-t1"], "network": "vlab-site"}'
    (lab_dir / "state.json").write_text(recorded)
    tftp_dir = tmp_path / "tftp"
    proc = vlab("pxe", "scenarios/site.toml", "--tftp-dir", str(tftp_dir), "--twins",
                env=_env(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "lab site is up" in proc.stderr and "vlab down" in proc.stderr
    assert (lab_dir / "state.json").read_text() == recorded
    assert not tftp_dir.exists()


def test_pxe_check_into_a_tree_its_tftp_server_cannot_reach_makes_nothing(
        tmp_path: Path) -> None:
    """The issue's own try: a --tftp-dir under mktemp -d (mode 0700)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    before = sorted(Path("/run/netns").iterdir()) if Path("/run/netns").exists() else []
    proc = vlab("pxe", "scenarios/site.toml", "--tftp-dir", str(private / "tftp"), "--twins",
                env=_env(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"{private} is mode 700" in proc.stderr and "chmod o+x" in proc.stderr
    assert list(private.iterdir()) == []
    assert not (tmp_path / "state").exists()
    assert (sorted(Path("/run/netns").iterdir()) if Path("/run/netns").exists() else []) == before


def test_nfs_server_stop_after_an_up_that_never_booted_keeps_its_log(tmp_path: Path) -> None:
    from vlab import scenario
    from vlab.plan.lab import Dirs
    from vlab.verbs.claim import plan_for
    plan = plan_for(scenario.load(ROOT / "scenarios/tiny.toml"),
                    Dirs(cache=tmp_path / "cache", state=tmp_path / "state"))
    plan.nfs_server_dir.mkdir(parents=True)
    (plan.nfs_server_dir / "ganesha.log").write_text("why the mount failed\n")
    assert not (plan.lab_dir / "console").exists()
    nfsserver.stop(plan)
    assert (plan.lab_dir / "console/ganesha.log").read_text() == "why the mount failed\n"
    assert not plan.nfs_server_dir.exists()


def test_an_error_vlab_did_not_expect_exits_4_never_1(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from vlab import cli

    def broken(_argv: list[str]) -> int:
        raise KeyError("a bug")

    monkeypatch.setenv("VLAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(cli, "run", broken)
    assert cli.main(["status", "scenarios/tiny.toml"]) == 4
    err = capsys.readouterr().err
    assert "internal error (KeyError" in err and "a bug in vlab, not a verdict" in err
    log = tmp_path / "state/vlab-errors.log"
    assert str(log) in err and "KeyError: 'a bug'" in log.read_text()


def test_a_closed_standard_output_ends_quietly_not_as_a_bug(tmp_path: Path) -> None:
    """`vlab status | head` on a long report: the reader is gone before vlab's output is. It
    ended once in exit 4 with a BrokenPipeError traceback in vlab-errors.log; now vlab ends
    as a command a closed pipe ends (141, 128 + SIGPIPE), saying nothing, logging nothing."""
    env = {**os.environ, "VLAB_STATE_DIR": str(tmp_path / "state"),
           "VLAB_CACHE_DIR": str(tmp_path / "cache")}
    read, write = os.pipe()
    os.close(read)  # the reader has gone
    try:
        done = subprocess.run([sys.executable, "-m", "vlab", "render", "scenarios/ten.toml",
                               "--out", str(tmp_path / "out")], cwd=ROOT, env=env,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert done.stderr == "" and not (tmp_path / "state/vlab-errors.log").exists()


def test_a_rendered_file_that_fails_its_check_is_exit_2_before_anything_is_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from vlab import cli
    from vlab.artifacts import templates

    def failing(xml: str, kind: str) -> None:
        raise templates.RenderError(f"rendered {kind} XML fails libvirt's {kind}.rng: (test)")

    monkeypatch.setenv("VLAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(templates, "validate", failing)
    assert cli.main(["up", str(ROOT / "scenarios/tiny.toml")]) == 2
    assert "fails libvirt's" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
