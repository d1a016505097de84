"""Faults while a lab runs (issue 32): the lab's own servers fail under running terminals,
and vlab says so, starts them again, and the terminals carry on. Real boots; needs root."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from lxml import etree
from test_boot import leftovers, plan_for, up, up_until, vlab

from vlab import procs, run
from vlab.cli import NETNS
from vlab.nodes import labhost, virt
from vlab.plan.lab import Dirs
from vlab.serve import nfsserver

pytestmark = pytest.mark.boot

# A heartbeat on the terminal, in its tmpfs: every half second, with the page cache dropped,
# a read of the NFS root (the busybox applets themselves come from it) and the guest's time.
HEARTBEAT = ("rm -f /tmp/beats; (while :; do echo 3 > /proc/sys/vm/drop_caches; "
             "cat /etc/passwd > /dev/null && date +%s >> /tmp/beats; sleep 0.5; done) "
             ">/dev/null 2>&1 </dev/null &")
DOWN_FOR = 10  # seconds the server stays away
# A terminal resumes within ~2 s of its server's return (bench/fault_bench.py measures it);
# before the server's MAC was pinned it took ~60 s (its neighbour entry had to go stale).
RESUMED_WITHIN = 15


def beats(path: str) -> list[int]:
    ran = vlab("ssh", path, "t1", "--", "cat /tmp/beats", timeout=120)
    assert ran.returncode == 0, ran.stderr
    return [int(b) for b in ran.stdout.split()]


@pytest.mark.parametrize("path", ["tests/scenarios/nfs3-one.toml", "tests/scenarios/one.toml"],
                         ids=["nfs3", "nfs4.1"])
def test_a_killed_nfs_server_is_said_started_again_and_busy_terminals_resume(
        lab_down, path: str) -> None:  # type: ignore[no-untyped-def]
    lab_down.append(path)
    plan = plan_for(path)
    proc, rep = up(path)
    assert proc.returncode == 0 and rep["terminals"][0]["verdict"] == "ok", proc.stderr
    started = vlab("ssh", path, "t1", "--", HEARTBEAT, timeout=120)
    assert started.returncode == 0, started.stderr
    time.sleep(3)
    server = nfsserver.pid(plan)
    assert server is not None
    os.kill(server, signal.SIGKILL)
    killed = time.time()
    time.sleep(2)
    status = vlab("status", path)
    assert status.returncode == 0, status.stderr
    assert "NFS server: down since " in status.stdout, status.stdout
    assert f"fix: vlab up {path} starts it again" in status.stdout
    ended = json.loads(vlab("status", path, "--json").stdout)["nfs_server_ended"]
    assert killed - 1 < ended < killed + 2
    time.sleep(DOWN_FOR - 2)
    again = vlab("up", path)
    assert again.returncode == 0, again.stderr
    assert "its NFS server is gone: starting it again" in again.stderr
    status = json.loads(vlab("status", path, "--json").stdout)
    assert status["nfs_server_pid"] and status["nfs_server_ended"] is None
    time.sleep(4)  # a few beats after the return; a terminal still waiting holds this read
    got = beats(path)
    # The guest's own clock: the gap in its heartbeat is the outage as the terminal saw it.
    gap, last_before = max((b - a, a) for a, b in zip(got, got[1:], strict=False))
    assert DOWN_FOR - 1 <= gap <= DOWN_FOR + RESUMED_WITHIN, (gap, got)
    assert got[-1] > last_before + gap  # and it beats on
    # what the scenario's probes would prove, again: the root is NFS and answers
    root = vlab("ssh", path, "t1", "--", "stat -f -c %T / && ls /bin | wc -l")
    assert root.returncode == 0 and root.stdout.split()[0] == "nfs", root
    assert vlab("down", path).returncode == 0
    assert leftovers(plan) == []


def test_a_server_vlab_stops_leaves_no_end_time(lab_down) -> None:  # type: ignore[no-untyped-def]
    """vlab's own stop is no fault: its watcher writes nothing, and down removes everything."""
    path = "tests/scenarios/one.toml"
    lab_down.append(path)
    plan = plan_for(path)
    proc, _rep = up(path)
    assert proc.returncode == 0, proc.stderr
    nfsserver.stop(plan)
    time.sleep(1)
    assert not plan.nfs_server_dir.exists()
    assert vlab("down", path).returncode == 0
    assert leftovers(plan) == []


def test_a_killed_dhcp_server_is_said_and_started_again_with_the_pinned_leases(
        lab_down) -> None:  # type: ignore[no-untyped-def]
    path = "tests/scenarios/one.toml"
    lab_down.append(path)
    plan = plan_for(path)
    proc, rep = up(path)
    assert proc.returncode == 0 and rep["terminals"][0]["verdict"] == "ok", proc.stderr
    dnsmasq = virt.dhcp_server(plan.network)
    assert dnsmasq is not None
    os.kill(dnsmasq, signal.SIGKILL)
    time.sleep(1)
    status = vlab("status", path)
    assert "DHCP server: down" in status.stdout, status.stdout
    assert f"no terminal gets or renews an address; fix: vlab up {path}" in status.stdout
    again = vlab("up", path)
    assert again.returncode == 0, again.stderr
    assert "DHCP server (dnsmasq) is gone: libvirt starts it again" in again.stderr
    restarted = json.loads(vlab("status", path, "--json").stdout)["dhcp_server_pid"]
    assert restarted and restarted != dnsmasq
    # the terminal asks again (a script that leaves its interface as it is): its pinned lease
    asked = vlab("ssh", path, "t1", "--", "udhcpc -i eth0 -n -q -t 5 -s /bin/true 2>&1")
    assert f"lease of {plan.terminals[0].ip} obtained" in asked.stdout, asked
    assert vlab("down", path).returncode == 0
    assert leftovers(plan) == []


def _restart_libvirtd() -> tuple[int, int]:
    """Stop the isolated lab host's libvirtd as a service restart does (SIGTERM), and start
    it again: QEMU, the guests and virtlogd's console logs stay."""
    assert labhost.status(NETNS).mode == "isolated", "the test restarts vlab's own lab host"
    old = procs.read_pid(labhost.LIBVIRTD_PID, "libvirtd")
    assert old is not None
    os.kill(old, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while procs.alive(old) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not procs.alive(old)
    new = labhost.start(NETNS, Dirs.from_env().state / "host").libvirtd_pid
    assert new is not None
    return old, new


@pytest.mark.parametrize("when", ["boot t1:", "watching"], ids=["booting", "watching"])
def test_libvirtd_restarted_under_vlab_up_and_every_verdict_still_arrives(
        lab_down, when: str) -> None:  # type: ignore[no-untyped-def]
    """vlab's connection opens itself again (libvirt's close callback and keepalive say it
    broke); a domain start or resume cut off is done on the new one; nobody is misjudged."""
    path = "tests/scenarios/three.toml"
    lab_down.append(path)
    plan = plan_for(path)
    proc, seen = up_until(path, when)
    old, new = _restart_libvirtd()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, seen + err
    assert "internal error" not in err and "libvirt:" not in err, err
    status = json.loads(vlab("status", path, "--json").stdout)
    assert [(t["state"], t["verdict"]) for t in status["terminals"]] == [("running", "ok")] * 3
    assert f"libvirtd pid {new}" in status["lab_host"] and new != old
    assert vlab("down", path).returncode == 0
    assert leftovers(plan) == []


def _fault_rules() -> str:
    """Every firewall rule of the machine and of the lab host: no fault's may be there."""
    return "".join(vlab_run(argv) for argv in (["iptables-save"], ["ip6tables-save"],
                                               ["ip", "netns", "exec", NETNS, "iptables-save"]))


def vlab_run(argv: list[str]) -> str:
    return run.run(argv, check=False).stdout


def test_each_kind_of_fault_is_made_and_every_terminal_carries_on(
        lab_down, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """scenarios/faults.toml: the DHCP server away across the terminals' lease renewal, the
    NFS server restarted and frozen, packets lost and held back, each for real; every
    terminal's NFS root answers again (measured by its heartbeat), each renewed its lease
    once the DHCP server was back (its log says so, and the terminal's console), the probes
    pass again, the JUnit has a testcase per terminal and fault, and nothing of a fault is
    left outside or inside the lab."""
    path = "scenarios/faults.toml"
    lab_down.append(path)
    plan = plan_for(path)
    junit = tmp_path / "junit.xml"
    ran = vlab("check", path, "--json", "--junit", str(junit), timeout=900)
    assert ran.returncode == 0, ran.stderr
    rep = json.loads(ran.stdout)
    kinds = ["dhcp-restart", "nfs-restart", "nfs-pause", "packet-loss", "latency"]
    for t in rep["terminals"]:
        assert [f["kind"] for f in t["faults"]] == kinds
        assert all(f["verdict"] == "ok" for f in t["faults"]), t["faults"]
        dhcp, restart = t["faults"][:2]
        assert dhcp["ended"] - dhcp["began"] >= 75
        assert dhcp["renewed_after"] is not None and 0 <= dhcp["renewed_after"] <= 60, dhcp
        assert restart["ended"] - restart["began"] >= 10
        assert restart["resumed_after"] <= 15  # its resume_within
        assert [c["ok"] for c in t["probes_after"]] == [True]
        # its own DHCP client's last word: it holds a lease (renewed, or on a slow machine
        # a new one once the old one ran out while the server was away), its address kept
        console = Path(t["console_log"]).read_text(errors="replace")
        said = re.findall(r"vlab-terminal: DHCP (lease of \S+ (?:bound|renew)|\w+ on eth0)",
                          console)
        held = rf"lease of {re.escape(t['ip'])} (bound|renew)"
        assert said and re.fullmatch(held, said[-1]), console
    assert "fault 2/5 nfs-restart: the NFS server stopped for 10 s" in ran.stderr
    assert "it renewed its DHCP lease" in ran.stderr
    assert "t1: carried on after latency" in ran.stderr
    suite = etree.parse(str(junit)).getroot()[0]
    names = [c.get("name") for c in suite if c.get("classname") == "vlab.faults.t2"]
    assert [n.split(":")[0] for n in names if n.startswith("fault")] == [
        f"fault {i} {k}" for i, k in enumerate(kinds, 1)]
    assert suite.get("failures") == "0"
    assert "vlab fault" not in _fault_rules()
    assert leftovers(plan) == []


def test_a_terminal_that_does_not_answer_again_in_time_is_nfs_hung(
        lab_down, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """All of the NFS server's packets lost for 20 s: TCP's retransmissions have backed off
    to seconds by then, and the fault gives 2 s: the terminal's verdict is nfs-hung, with
    what the server saw; vlab check fails, and its JUnit says why."""
    path = "tests/scenarios/faults-hung.toml"
    lab_down.append(path)
    plan = plan_for(path)
    junit = tmp_path / "junit.xml"
    ran = vlab("check", path, "--json", "--junit", str(junit), timeout=900)
    assert ran.returncode == 1, ran.stderr
    assert "1 fault(s) a terminal did not carry on after: t1: packet-loss (nfs-hung)" in ran.stderr
    (t,) = json.loads(ran.stdout)["terminals"]
    assert t["verdict"] == "ok"
    (f,) = t["faults"]
    assert f["verdict"] == "nfs-hung"
    assert f["line"].startswith("its NFS root did not answer within 2 s after the fault ended")
    assert f"the NFS server runs and holds a connection from t1 ({plan.terminals[0].ip})" in (
        f["line"])
    failure = etree.parse(str(junit)).getroot()[0].find("testcase/failure[@type='nfs-hung']")
    assert failure is not None and "did not answer within 2 s" in failure.get("message")
    assert leftovers(plan) == []


def test_a_full_state_folder_during_up_is_one_clear_error_and_down_and_up_work_after(
        lab_down, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The state folder on a 20 MiB file system: the kernel vlab puts there does not fit.
    One message naming the file and the fix, exit 3 (not a bug's 4), no half-written state
    file; vlab down works on what is left, and once there is room vlab up boots."""
    folder = Path("/var/lib/vlab/test-full-state")  # libvirt-qemu must reach the kernel there
    folder.mkdir(parents=True, exist_ok=True)
    run.run(["mount", "-t", "tmpfs", "-o", "size=20m,mode=755", "vlab-test-full", str(folder)])
    try:
        monkeypatch.setenv("VLAB_STATE_DIR", str(folder))
        path = "tests/scenarios/one.toml"
        lab_down.append(path)
        plan = plan_for(path)
        full = vlab("up", path)
        assert full.returncode == 3, full.stderr
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith(f"vlab: no space left for {folder}/"), last
        assert "fix: free space on that device" in last and f"vlab down {path}" in last
        assert not list(folder.rglob("*.tmp")) and not (folder / "vlab-errors.log").exists()
        assert vlab("down", path).returncode == 0
        assert leftovers(plan) == []
        run.run(["mount", "-o", "remount,size=400m", str(folder)])
        proc, rep = up(path)
        assert proc.returncode == 0 and rep["terminals"][0]["verdict"] == "ok", proc.stderr
        assert vlab("down", path).returncode == 0
        assert leftovers(plan) == []
    finally:
        run.run(["umount", "-l", str(folder)], check=False)


def test_a_fault_during_the_boot_is_made_once_the_root_is_mounted_and_the_boot_carries_on(
        lab_down) -> None:  # type: ignore[no-untyped-def]
    """after = "nfs-mounted": a Debian root's systemd reads its root for tens of seconds after
    the mount; the NFS server stopped for 10 s then does not keep it from its verdict, and the
    fault's outcome is that verdict."""
    path = "tests/scenarios/faults-boot.toml"
    lab_down.append(path)
    plan = plan_for(path)
    proc, rep = up(path)
    assert proc.returncode == 0, proc.stderr
    assert "fault 1/1 (during the boot) nfs-restart: the NFS server stopped for 10 s" in (
        proc.stderr)
    (t,) = rep["terminals"]
    assert t["verdict"] == "ok"
    (f,) = t["faults"]
    assert (f["kind"], f["after"], f["verdict"], f["line"]) == (
        "nfs-restart", "nfs-mounted", "ok", "")  # the verdict came after it began
    mounted = dict(t["phases"])["nfs-mounted"] + t["booted_at"]  # both rounded to 0.01 s
    assert mounted - 0.1 <= f["began"] < t["booted_at"] + t["seconds"]
    assert f["ended"] - f["began"] >= 10
    assert vlab("down", path).returncode == 0
    assert leftovers(plan) == []
