"""`[pxe]` and the `[[host]]` tables: the physical machines that PXE-boot the lab's root."""

from __future__ import annotations

import ipaddress

from vlab.scenario.model import Firmware, Machine, Pxe
from vlab.scenario.table import Table

KEYS = ("name", "mac", "ip", "root", "cmdline", "firmware")
# The twins vlab adds per firmware (plan._twins): a host of that name would be two twins.
DEFAULT_TWINS = frozenset(f"default-{f.value}" for f in Firmware if f is not Firmware.BIOS)


def pxe(top: Table) -> Pxe:
    pxe_t = Table(top.file, "pxe", top.sub("pxe", {}), ("nfs_server", "firmware"))
    default = pxe_t.choice("firmware", Firmware, Firmware.BIOS)
    raw = top.tables("host", "write each physical host as a [[host]] table")
    found: list[Machine] = []
    names: dict[str, int] = {}
    macs: dict[str, int] = {}
    ips: dict[ipaddress.IPv4Address, int] = {}
    for i, item in enumerate(raw):
        t = Table(top.file, f"host[{i}]", item, KEYS)
        name = t.unique_name(names, i, "host")
        if name == "default":
            raise t.error("name", '"default" is the name of the config every unknown MAC '
                          "boots (pxelinux.cfg/default) and of its twin", "rename the host")
        if name in DEFAULT_TWINS:
            raise t.error("name", f'"{name}" is the name vlab gives the twin that boots the '
                          f"default config with {name.removeprefix('default-')} firmware",
                          "rename the host")
        if "mac" not in t.data:
            raise t.error("mac", "is missing", 'a physical host is known by its MAC: '
                          'add mac = "00:11:22:33:44:55"')
        mac = t.mac(macs, i, "host")
        assert mac is not None
        ip = t.ip("ip")
        if ip is not None and ip in ips:
            raise t.error("ip", f"{ip} is also the address of host[{ips[ip]}]",
                          "give every host its own address")
        if ip is not None:
            ips[ip] = i
        found.append(Machine(name=name, mac=mac, ip=ip, root=t.root_override(),
                             cmdline=t.cmdline(), firmware=t.choice("firmware", Firmware, default)))
    return Pxe(nfs_server=pxe_t.ip("nfs_server"), machines=tuple(found), firmware=default)
