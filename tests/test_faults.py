"""Faults: vlab up killed with SIGKILL at every stage, many up/down cycles, two labs side by
side, vlab gc. After vlab down (or gc) nothing of a lab may remain. Real boots, like
test_boot.py; needs root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT
from test_boot import VLAB, leftovers, plan_for, up, up_until, vlab

from vlab import procs, run
from vlab.build import nfsroot
from vlab.plan.lab import Dirs
from vlab.serve import nfsserver

pytestmark = pytest.mark.boot

# The progress line after which each kill lands, and what had happened by then.
KILL_POINTS = [
    ("NFS root: image", "building: the image is attached and mounted"),
    ("export: nfs-ganesha", "the network is defined and the NFS server runs"),
    ("boot t2:", "the domains were started"),
    ("watching", "vlab is watching the consoles"),
]


@pytest.fixture
def image_lab(tmp_path: Path, lab_down) -> str:  # type: ignore[no-untyped-def]
    """An NFSv3 lab (rpcbind too) whose root is a disk image: every kind of resource."""
    root = Dirs.from_env().cache / "roots" / "busybox"
    nfsroot.build_busybox(root)
    image = tmp_path / "terminal.img"
    run.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(image), "64M"])
    path = tmp_path / "killed.toml"
    path.write_text('[lab]\nname = "killed"\nnfs_version = "3"\n'
                    '[root]\nsource = "image"\npath = "terminal.img"\n[kernel]\nsource = "debian"\n'
                    '[[terminal]]\nname = "t1"\n[[terminal]]\nname = "t2"\n')
    lab_down.append(str(path))
    return str(path)


def _up_killed_after(path: str, line_start: str) -> str:
    proc, seen = up_until(path, line_start)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, seen
    return seen


@pytest.mark.parametrize(("line", "when"), KILL_POINTS, ids=[w for _, w in KILL_POINTS])
def test_sigkill_during_up_then_down_leaves_nothing(image_lab: str, line: str, when: str) -> None:
    plan = plan_for(image_lab)
    _up_killed_after(image_lab, line)
    assert (plan.lab_dir / "state.json").exists()  # what was made is on record
    assert leftovers(plan) != []  # the kill left things behind for down to find
    down = vlab("down", image_lab)
    assert down.returncode == 0, down.stderr
    assert leftovers(plan) == [], when
    proc, rep = up(image_lab)  # and the lab comes up cleanly afterwards
    assert proc.returncode == 0, proc.stderr
    assert [t["verdict"] for t in rep["terminals"]] == ["ok", "ok"]
    assert vlab("down", image_lab).returncode == 0
    assert leftovers(plan) == []


def test_twenty_up_down_cycles_leave_nothing(lab_down) -> None:  # type: ignore[no-untyped-def]
    path = "tests/scenarios/one.toml"
    lab_down.append(path)
    plan = plan_for(path)
    for cycle in range(20):
        proc, rep = up(path)
        assert proc.returncode == 0, f"cycle {cycle}: {proc.stderr}"
        assert rep["terminals"][0]["verdict"] == "ok"
        assert vlab("down", path).returncode == 0
        assert leftovers(plan) == [], f"cycle {cycle}"


def test_two_labs_up_at_once_do_not_collide(lab_down) -> None:  # type: ignore[no-untyped-def]
    paths = ["scenarios/tiny.toml", "tests/scenarios/one.toml"]
    lab_down.extend(paths)
    procs = [subprocess.Popen([*VLAB, "up", p, "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in paths]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    plans = [plan_for(p) for p in paths]
    a, b = plans
    assert a.subnet != b.subnet and a.bridge != b.bridge and a.network != b.network
    # Each lab's server: a namespace and an address of its own, on a site's ports.
    assert a.nfs_netns != b.nfs_netns and a.nfs_address != b.nfs_address
    macs = [t["mac"] for r in reports for t in r["terminals"]]
    ips = [t["ip"] for r in reports for t in r["terminals"]]
    assert len(set(macs)) == len(macs) and len(set(ips)) == len(ips)
    for rep, plan in zip(reports, plans, strict=True):
        for t in rep["terminals"]:
            assert t["verdict"] == "ok"
            assert t["proof"]["server"] == plan.nfs_address  # each its own lab's server
            # on 2049, which the kernel does not print (it shows a port only if another)
            assert not any(o.startswith("port=") for o in t["proof"]["options"].split(","))
    # One lab going down leaves the other running.
    assert vlab("down", paths[0]).returncode == 0
    status = json.loads(vlab("status", paths[1], "--json").stdout)
    assert [t["state"] for t in status["terminals"]] == ["running"]
    assert status["nfs_server_pid"]
    assert vlab("down", paths[1]).returncode == 0
    assert leftovers(a) == [] and leftovers(b) == []


def test_a_second_vlab_on_the_same_lab_is_refused_while_the_first_works(lab_down) -> None:  # type: ignore[no-untyped-def]
    path = "tests/scenarios/one.toml"
    lab_down.append(path)
    first, _seen = up_until(path, "lab host")
    second = vlab("up", path)
    assert second.returncode == 3
    assert "another vlab process is working on lab 'one'" in second.stderr
    rest = first.stderr.read()  # type: ignore[union-attr]
    assert first.wait(timeout=300) == 0, _seen + rest
    assert vlab("down", path).returncode == 0


def test_gc_removes_what_a_lab_without_state_left(lab_down) -> None:  # type: ignore[no-untyped-def]
    path = "tests/scenarios/one.toml"
    lab_down.append(path)
    plan = plan_for(path)
    proc, _rep = up(path)
    assert proc.returncode == 0, proc.stderr
    (plan.lab_dir / "state.json").unlink()  # as if someone wiped vlab's state
    gc = vlab("gc", timeout=120)
    assert gc.returncode == 0, gc.stderr
    assert f"domain {plan.terminals[0].domain} (lab one)" in gc.stderr
    assert f"network {plan.network}" in gc.stderr
    assert "process" in gc.stderr and "ganesha" in gc.stderr
    assert f"network namespace {plan.nfs_netns}" in gc.stderr
    assert leftovers(plan) == []
    again = vlab("gc", timeout=60)
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_already_up_changes_nothing(lab_down) -> None:  # type: ignore[no-untyped-def]
    path = "tests/scenarios/one.toml"
    lab_down.append(path)
    proc, _rep = up(path)
    assert proc.returncode == 0, proc.stderr
    before = json.loads(vlab("status", path, "--json").stdout)
    log = Path(before["terminals"][0]["console_log"])
    size = log.stat().st_size
    time.sleep(1)
    again = vlab("up", path)
    assert again.returncode == 0 and "already up: nothing changed" in again.stderr
    after = json.loads(vlab("status", path, "--json").stdout)
    assert after == before
    assert log.stat().st_size >= size and log.read_text().count("VLAB-NFSROOT-OK") == 1
    # Its NFS server gone (killed): the next up starts it again, and the terminals stay.
    plan = plan_for(path)
    server = nfsserver.pid(plan)
    assert server is not None
    procs.stop(server)
    revived = vlab("up", path)
    assert revived.returncode == 0, revived.stderr
    assert "its NFS server is gone: starting it again" in revived.stderr
    assert nfsserver.pid(plan) not in (None, server)
    assert json.loads(vlab("status", path, "--json").stdout)["terminals"] == before["terminals"]
    assert vlab("down", path).returncode == 0


def test_up_of_a_changed_scenario_on_a_lab_that_is_up_names_what_would_change(
        tmp_path: Path, lab_down) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "changing.toml"
    path.write_text('[lab]\nname = "changing"\n[[terminal]]\nname = "t1"\n')
    lab_down.append(str(path))
    proc, _rep = up(str(path))
    assert proc.returncode == 0, proc.stderr
    path.write_text('[lab]\nname = "changing"\n[[terminal]]\nname = "t1"\nmemory = 384\n')
    changed = vlab("up", str(path))
    assert changed.returncode == 2, changed.stderr
    assert "domains/t1.xml would change" in changed.stderr and "vlab down" in changed.stderr
    assert vlab("down", str(path)).returncode == 0


def test_sigkill_mid_build_of_a_cached_artifact_leaves_no_half_built_folder(
    tmp_path: Path, lab_down  # type: ignore[no-untyped-def]
) -> None:
    """A cold cache: kill vlab while it assembles the initrd, then down: no temp folder stays."""
    env = {**os.environ, "VLAB_CACHE_DIR": str(tmp_path / "cache")}
    path = "tests/scenarios/one.toml"
    lab_down.append(path)
    proc, _seen = up_until(path, "(cached after the first fetch)", env=env)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    down = vlab("down", str(path), env=env, timeout=120)
    assert down.returncode == 0, down.stderr
    half = [p for p in (tmp_path / "cache").rglob(".*") if ".tmp-" in p.name]
    assert half == []


def test_nothing_vlab_starts_listens_in_the_machines_own_namespace(lab_down) -> None:  # type: ignore[no-untyped-def]
    path = "tests/scenarios/nfs3-one.toml"
    lab_down.append(path)
    plan = plan_for(path)
    proc, _rep = up(path)
    assert proc.returncode == 0, proc.stderr
    mine = procs.netns_of(1)
    started = {name: pid for name, pid in (
        ("nfs-ganesha", nfsserver.server_pid(plan.nfs_server_dir / "ganesha.pid")),
        ("rpcbind", procs.read_pid(plan.nfs_server_dir / "rpcbind.pid", "rpcbind")),
    )}
    dnsmasq = procs.with_argument(f"--conf-file=/var/lib/libvirt/dnsmasq/{plan.network}.conf",
                                  "dnsmasq")
    libvirtd = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                if procs.arguments(pid)[:1] == ["libvirtd"]]
    assert dnsmasq and libvirtd
    started |= {f"dnsmasq {pid}": pid for pid in dnsmasq}
    started |= {f"libvirtd {pid}": pid for pid in libvirtd}
    assert all(pid is not None for pid in started.values()), started
    assert {name: procs.netns_of(pid) for name, pid in started.items()  # type: ignore[arg-type]
            if procs.netns_of(pid) == mine} == {}  # type: ignore[arg-type]
    assert not procs.listening(1, plan.nfs_port) and not procs.listening(1, plan.mount_port)
    assert procs.listening(started["nfs-ganesha"], plan.nfs_port)  # type: ignore[arg-type]
    assert vlab("down", path).returncode == 0


# How long the parallel churn runs: a few cycles of each lab on a 2-core machine under TCG.
CHURN_SECONDS = 100
TWINS_TREE = "/var/lib/vlab/test-tftp/churn"  # a folder libvirt-qemu's dnsmasq may traverse


def test_several_vlab_commands_at_once_for_minutes_leave_nothing_and_lose_no_record(
        lab_down) -> None:  # type: ignore[no-untyped-def]
    """CI machines run several jobs at once: here three cycle side by side (an NFSv4.1 lab's
    up and down, an NFSv3 lab's, which shares nothing but the lab host, and `vlab pxe
    --twins` of a site) while a fourth lab stays up throughout. Every command must succeed,
    the steady lab's record (lease, verdicts, servers) must be as it was, and afterwards
    nothing of any of them may remain."""
    steady, cycling = "scenarios/tiny.toml", ["tests/scenarios/one.toml",
                                              "tests/scenarios/nfs3-one.toml"]
    site = "scenarios/site.toml"
    lab_down.extend([steady, *cycling, site])
    proc, before = up(steady)
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + CHURN_SECONDS
    failures: list[str] = []
    counts: dict[str, int] = {}

    def cycle(path: str) -> None:
        while time.monotonic() < deadline and not failures:
            ran, rep = up(path)
            if ran.returncode != 0 or any(t["verdict"] != "ok" for t in rep["terminals"]):
                failures.append(f"vlab up {path}: {ran.returncode} {ran.stderr[-2000:]}")
            down = vlab("down", path)
            if down.returncode != 0:
                failures.append(f"vlab down {path}: {down.stderr[-2000:]}")
            counts[path] = counts.get(path, 0) + 1

    def twins() -> None:
        while time.monotonic() < deadline and not failures:
            ran = vlab("pxe", site, "--tftp-dir", TWINS_TREE, "--twins", "--json")
            if ran.returncode != 0:
                failures.append(f"vlab pxe --twins: {ran.returncode} {ran.stderr[-2000:]}")
            counts[site] = counts.get(site, 0) + 1

    workers = [threading.Thread(target=cycle, args=(p,)) for p in cycling]
    workers.append(threading.Thread(target=twins))
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=CHURN_SECONDS + 900)
    assert not failures, failures
    assert all(counts.get(p, 0) >= 2 for p in [*cycling, site]), counts
    after = json.loads(vlab("status", steady, "--json").stdout)
    assert [(t["name"], t["mac"], t["ip"], t["state"], t["verdict"]) for t in
            after["terminals"]] == [(t["name"], t["mac"], t["ip"], "running", "ok")
                                    for t in before["terminals"]]
    assert after["nfs_server_pid"] and after["dhcp_server_pid"]
    assert vlab("down", steady).returncode == 0
    for path in [steady, *cycling, site]:
        plan = plan_for(path)
        assert leftovers(plan) == [], path
        assert not (Path("/run/netns") / str(plan.nfs_netns)).exists(), path
