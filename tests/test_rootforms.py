"""Every root= form a site writes, booted for real with vlab's own initrd: one busybox terminal
per form, all in one lab, judged as dracut's NFS test judges: the server, the NFS version and
the options in /proc/mounts (the proof line) are the ones the form names, wsize=4096 exactly
when asked for. The lab hands out a root path by DHCP too, so each command-line form also
proves that the command line wins over DHCP; one terminal's DHCP root path is wrong on purpose."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from test_boot import plan_for, up, vlab

pytestmark = pytest.mark.boot

SUBNET = "10.213.233"
# As a site writes them: the lab's server listens where a site's does (2049; NFSv3 through
# rpcbind), so no form names a port.
FORMS = {
    # the page's
    "page": "root={server}:{export} rootflags=vers=4.2",
    # dracut's
    "nfs3": "root=nfs:{server}:{export}:vers=3,nolock,wsize=4096",
    "nfs4": "root=nfs4:{server}:{export}",
    "nosrv": "root=nfs4:{export}:vers=4.2",
    "flags": "root=nfs4:{server}:{export}:vers=4.1 rootflags=wsize=4096",
    "rdhcp": "root=dhcp",
    # the kernel's
    "kernel": "root=/dev/nfs nfsroot={server}:{export},vers=4.1,wsize=4096 ip=dhcp",
    "static": "root=/dev/nfs nfsroot={export},vers=4.2 "
              "ip={static}:{server}:{server}:255.255.255.0:st:eth0:off",
    "devnfs": "root=/dev/nfs ip=dhcp",
    # not an NFS root at all
    "disk": "root=/dev/sda1",
}
# Literally as sites write them: no options at all. The lab's server speaks TCP only (as
# nfs-utils' does by default today): the initrd must take TCP, as the kernel's and dracut's
# own mounts do.
BARE = {
    "bare": "root={server}:{export}",
    "nfsbare": "root=nfs:{server}:{export}",
    "krnbare": "root=/dev/nfs nfsroot={server}:{export} ip=dhcp",
}
# ...and the DHCP root paths sites hand out (option 17), with root=dhcp.
BARE_DHCP = {"dhcpbare": "{server}:{export}", "dhcppath": "{export}"}


def test_every_root_form_mounts_what_it_names(tmp_path: Path, lab_down) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "forms.toml"
    head = (f'[lab]\nname = "rootforms"\nsubnet = "{SUBNET}.0/24"\nnfs_version = "3"\n'
            'root_via = "dhcp"\ntimeout = 180\n[kernel]\nsource = "debian"\n')
    path.write_text(head + '[[terminal]]\nname = "page"\n')
    plan = plan_for(str(path))
    static = str(ipaddress.ip_address(f"{SUBNET}.200"))
    values = {"server": plan.nfs_address, "export": plan.export_path, "static": static}
    text = head
    for name, form in {**FORMS, **BARE}.items():
        text += f'[[terminal]]\nname = "{name}"\ncmdline = "{form.format(**values)}"\n'
        if name == "page":  # DHCP names a path nobody exports: the command line must win
            text += 'dhcp_root_path = "/no/such/export"\n'
    for name, root_path in BARE_DHCP.items():
        text += (f'[[terminal]]\nname = "{name}"\ncmdline = "root=dhcp"\n'
                 f'dhcp_root_path = "{root_path.format(**values)}"\n')
    path.write_text(text)
    lab_down.append(str(path))
    proc, rep = up(str(path))
    assert vlab("down", str(path)).returncode == 0
    by = {t["name"]: t for t in rep["terminals"]}
    assert static not in {t["ip"] for t in rep["terminals"]}
    for name in FORMS:
        if name == "disk":
            continue
        t = by[name]
        assert t["verdict"] == "ok", (name, t)
        proof = t["proof"]
        assert (proof["server"], proof["export"]) == (plan.nfs_address, str(plan.export_path)), t
        options = proof["options"].split(",")
        version = next(o for o in options if o.startswith("vers="))
        # The kernel's own mount takes nfs4's vers=4 as 4.0; DHCP's root path is the lab's.
        assert version == {"nfs3": "vers=3", "rdhcp": "vers=3", "devnfs": "vers=3",
                           "nfs4": "vers=4.0", "flags": "vers=4.1", "kernel": "vers=4.1"}.get(
            name, "vers=4.2"), (name, options)
        assert ("wsize=4096" in options) == (name in ("nfs3", "flags", "kernel")), (name, options)
        log = Path(t["console_log"]).read_text()
        if name == "static":
            assert f"eth0 is {static}/24 (static, from ip=; no DHCP)" in log
            assert "lease from" not in log and "udhcpc" not in log
        if name in ("rdhcp", "devnfs"):
            assert "root path from DHCP" in log
    for name in [*BARE, *BARE_DHCP]:
        t = by[name]
        assert t["verdict"] == "ok", (name, t)
        proof = t["proof"]
        assert (proof["server"], proof["export"]) == (plan.nfs_address, str(plan.export_path)), t
        # The kernel's default version (3), over TCP, locks kept local (nolock), as the
        # kernel's own nfsroot and klibc's nfsmount mount.
        assert {"vers=3", "proto=tcp", "nolock"} <= set(proof["options"].split(",")), proof
    assert by["disk"]["verdict"] == "init-failed", by["disk"]
    assert "root=/dev/sda1 is no NFS root" in by["disk"]["line"]
    assert proc.returncode == 1
