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

from vlab import nfsserver, procs, virt

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
    time.sleep(0.3)
    try:
        env = {**os.environ, "VLAB_STATE_DIR": str(tmp_path / "state"),
               "VLAB_CACHE_DIR": str(tmp_path / "cache")}
        gc = subprocess.run([sys.executable, "-m", "vlab", "gc"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
        assert gc.returncode == 0, gc.stderr
        server.wait(timeout=10)
        assert f"process {server.pid} (lab gone)" in gc.stderr
        assert tail.poll() is None and tar.poll() is None, gc.stderr
    finally:
        for p in (server, tail, tar):
            p.kill()
            p.wait()


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
