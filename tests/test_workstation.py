"""lab_host = "auto" on a developer's workstation, for real (issue 18): a libvirtd vlab did not
start, with its `default` NAT network on the very subnet the first lab's name would give it,
an rpcbind and a dnsmasq of the workstation's own, and a LAN that routes every private address
through the workstation (tests/workstation.py). Two labs (NFSv4 and NFSv3) come up there side
by side, boot, and go down; from the LAN nothing of them answers while they are up, and the
workstation's own things are as they were after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workstation
from workstation import ADDR, LAN_RANGE, Workstation

from vlab.plan.lease import lab_subnet

pytestmark = pytest.mark.boot

LABS = {"wsdev": "", "wsnfs3": 'nfs_version = "3"\n'}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workstation]:
    w = workstation.start(tmp_path_factory.mktemp("ws"), str(lab_subnet("wsdev")))
    try:
        yield w
    finally:
        workstation.stop(w.dir)


def _vlab(w: Workstation, *argv: str) -> subprocess.CompletedProcess[str]:
    return w.run(sys.executable, "-m", "vlab", *argv, timeout=600,
                 env={"VLAB_CACHE_DIR": os.environ.get("VLAB_CACHE_DIR", "/var/cache/vlab")})


def _scenarios(folder: Path) -> dict[str, Path]:
    paths = {}
    for lab, extra in LABS.items():
        paths[lab] = folder / f"{lab}.toml"
        paths[lab].write_text(f'[lab]\nname = "{lab}"\nlab_host = "auto"\n{extra}'
                              '[[terminal]]\nname = "t1"\n')
    return paths


def _up_side_by_side(w: Workstation, paths: dict[str, Path]) -> dict[str, Any]:
    env = {**os.environ,
           "VLAB_CACHE_DIR": os.environ.get("VLAB_CACHE_DIR", "/var/cache/vlab")}
    procs = {lab: subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{workstation.NETNS}",
         f"--mount=/proc/{w.anchor()}/ns/mnt", "--", sys.executable, "-m", "vlab", "up",
         str(p), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env) for lab, p in paths.items()}
    results = {}
    for lab, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "lab host: system, libvirtd pid" in err, err
        results[lab] = json.loads(out)
    return results


def test_labs_on_a_workstation_boot_face_no_lan_and_leave_its_own_things(
        ws: Workstation, tmp_path: Path) -> None:
    own = ws.own_daemons()
    default_before = ws.virsh("net-dumpxml", "default")
    paths = _scenarios(tmp_path)
    try:
        reps = _up_side_by_side(ws, paths)
        for rep in reps.values():
            assert [t["verdict"] for t in rep["terminals"]] == ["ok"]
        servers = {lab: rep["terminals"][0]["proof"]["server"] for lab, rep in reps.items()}
        # The default network holds the subnet wsdev's name gives: vlab took another one.
        assert not servers["wsdev"].startswith(str(lab_subnet("wsdev"))[:-4]), servers
        assert ws.virsh("net-info", "default").count("Active:         yes") == 1
        domains = ws.virsh("list", "--name").split()
        assert sorted(domains) == ["vlab-wsdev-t1", "vlab-wsnfs3-t1"], domains
        networks = sorted(ln.split()[0] for ln in ws.virsh("net-list").splitlines())
        assert networks == ["default", "vlab-wsdev", "vlab-wsnfs3"], networks
        status = _vlab(ws, "lab-host", "status")
        assert "lab host: system" in status.stdout and "vlab did not start" in status.stdout

        gateways = [s.rsplit(".", 1)[0] + ".1" for s in servers.values()]
        lab_addrs = [*servers.values(), *gateways]
        seen = workstation.probe({
            "tcp": [f"{a}:{p}" for a in lab_addrs for p in (2049, 20048, 111, 53)]
            + [f"{ADDR}:2049", f"{ADDR}:20048", f"{ADDR}:111"],
            "dns": [*gateways, ADDR], "tftp": gateways, "rpc": [*lab_addrs, ADDR]})
        # The workstation's own rpcbind and dnsmasq answer the LAN, as they did before:
        # the probes work. Nothing of the labs does, nor an NFS server on its LAN address.
        answered = sorted(k for k, v in seen.items() if v is True)
        assert answered == sorted([f"tcp {ADDR}:111", f"dns {ADDR}", f"rpcbind {ADDR}"]), seen
        offers = seen["dhcp offers"]
        assert offers and all(server == ADDR and LAN_RANGE[0] <= ip <= LAN_RANGE[1]
                              for server, ip in offers), offers  # type: ignore[union-attr]
        # The lab's NFSv3 server registered with its own rpcbind, not the workstation's.
        assert " 100003 " not in ws.run("rpcinfo", "-p", "127.0.0.1").stdout
    finally:
        downs = {lab: _vlab(ws, "down", str(p)) for lab, p in paths.items()}
    assert all(d.returncode == 0 for d in downs.values()), downs
    assert ws.virsh("list", "--all", "--name").split() == []
    assert [ln.split()[0] for ln in ws.virsh("net-list", "--all").splitlines()] == ["default"]
    assert ws.virsh("net-dumpxml", "default") == default_before
    assert ws.virsh("net-info", "default").count("Active:         yes") == 1
    assert "vlab lab" not in ws.run("iptables", "-S", "INPUT").stdout
    assert "vlab-nfs" not in ws.run("ip", "netns", "list").stdout
    for name, pid in own.items():
        assert Path(f"/proc/{pid}").exists(), f"the workstation's {name} was stopped"
    assert ws.own_daemons() == own
    after = workstation.probe({"dns": [ADDR], "rpc": [ADDR]})
    assert after["dns 10.215.0.2"] is True and after["rpcbind 10.215.0.2"] is True, after
