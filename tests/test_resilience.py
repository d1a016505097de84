"""Faults while a lab runs (issue 32): the lab's own servers fail under running terminals,
and vlab says so, starts them again, and the terminals carry on. Real boots; needs root."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from test_boot import leftovers, plan_for, up, up_until, vlab

from vlab import procs
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
    time.sleep(RESUMED_WITHIN)
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
