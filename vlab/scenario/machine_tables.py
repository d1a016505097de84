"""`[pxe]` and the `[[machine]]` tables: the physical machines that PXE-boot the lab's root."""

from __future__ import annotations

import ipaddress
import re

from vlab.scenario.model import LAB_HOST, NFS_HOST, Arch, Firmware, Machine, Netboot, Pxe
from vlab.scenario.table import Table

KEYS = ("name", "mac", "ip", "export", "cmdline", "firmware", "netboot", "arch")
# `[pxe] http_url`: it goes into DHCP answers and the web server's snippet, so plain words only.
HTTP_URL_RE = re.compile(r"http://[A-Za-z0-9.-]{1,253}(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/-]*)?")
# The twins vlab adds per firmware (plan._twins): a host of that name would be two twins.
DEFAULT_TWINS = frozenset(f"default-{f.value}" for f in Firmware if f is not Firmware.BIOS)


def pxe(top: Table, subnet: ipaddress.IPv4Network | None) -> Pxe:
    """The site's hosts. A host inside the lab's `subnet` keeps its address in the twin
    check, so it may not be one of the lab's own."""
    pxe_t = Table(top.file, "pxe", top.sub("pxe", {}),
                  ("nfs_server", "firmware", "netboot", "http_url"))
    default = pxe_t.choice("firmware", Firmware, Firmware.BIOS)
    default_netboot = pxe_t.choice("netboot", Netboot, Netboot.TFTP)
    http_url = _http_url(pxe_t)
    raw = top.tables("machine", "write each physical machine as a [[machine]] table")
    found: list[Machine] = []
    names: dict[str, int] = {}
    macs: dict[str, int] = {}
    ips: dict[ipaddress.IPv4Address, int] = {}
    for i, item in enumerate(raw):
        t = Table(top.file, f"machine[{i}]", item, KEYS)
        name = t.unique_name(names, i, "machine")
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
        mac = t.mac(macs, i, "machine")
        assert mac is not None
        ip = t.ip("ip")
        if ip is not None and ip in ips:
            raise t.error("ip", f"{ip} is also the address of machine[{ips[ip]}]",
                          "give every host its own address")
        if ip is not None:
            _not_the_labs_own(t, ip, subnet)
            ips[ip] = i
        arch = t.choice("arch", Arch, Arch.AMD64)
        firmware = _firmware(t, arch, default)
        found.append(Machine(name=name, mac=mac, ip=ip, export=t.export(), cmdline=t.cmdline(),
                             firmware=firmware, netboot=_netboot(t, firmware, default_netboot,
                                                                 arch), arch=arch))
    return Pxe(nfs_server=pxe_t.ip("nfs_server"), machines=tuple(found), firmware=default,
               netboot=default_netboot, http_url=http_url)


def _firmware(t: Table, arch: Arch, default: Firmware) -> Firmware:
    """A machine's firmware; an arm64 machine's is UEFI (AAVMF in its twin) unless it says
    uefi-secure."""
    if arch is Arch.AMD64:
        return t.choice("firmware", Firmware, default)
    firmware = t.choice("firmware", Firmware,
                        Firmware.UEFI if default is Firmware.BIOS else default)
    if firmware is Firmware.BIOS:
        raise t.error("firmware", '"bios" for an arm64 machine: arm64 machines boot by UEFI',
                      'use firmware = "uefi" or "uefi-secure", or leave firmware out')
    return firmware


def _netboot(t: Table, firmware: Firmware, default: Netboot, arch: Arch) -> Netboot:
    netboot = t.choice("netboot", Netboot, default)
    if arch is Arch.ARM64 and netboot is not Netboot.TFTP:
        raise t.error("netboot" if "netboot" in t.data else "arch",
                      f'"{netboot.value}" for an arm64 machine: vlab writes arm64 hosts '
                      "shim and GRUB over TFTP only (Debian's iPXE has no arm64 build)",
                      'use netboot = "tftp" for arm64 machines')
    if netboot is Netboot.HTTP and firmware is Firmware.BIOS:
        where = "netboot" if "netboot" in t.data else "firmware"
        raise t.error(where, "HTTP boot is UEFI's: a BIOS host's PXE fetches over TFTP only",
                      'set netboot = "ipxe" (iPXE fetches the kernel and initrd over HTTP), '
                      '"tftp", or firmware = "uefi"')
    return netboot


def _http_url(t: Table) -> str:
    """Where the site's web server serves the tree, ending in "/" ("" when not given)."""
    if "http_url" not in t.data:
        return ""
    url = t.get("http_url", str)
    if HTTP_URL_RE.fullmatch(url) is None:
        raise t.error("http_url", f"{url!r} is not a URL vlab can hand out",
                      'write it as http://SERVER[:PORT]/PATH/ (letters, digits, ".", "-", "_", '
                      '"~" and "/"; no https: firmware HTTP boot would need your CA enrolled)')
    return url if url.endswith("/") else url + "/"


def _not_the_labs_own(t: Table, ip: ipaddress.IPv4Address,
                      subnet: ipaddress.IPv4Network | None) -> None:
    if subnet is None or ip not in subnet:
        return
    own = {subnet.network_address: "the network address",
           subnet.broadcast_address: "the broadcast address",
           subnet.network_address + LAB_HOST: "the lab host's address (DHCP and TFTP)",
           subnet.network_address + NFS_HOST: "the NFS server's address"}
    if ip in own:
        raise t.error("ip", f"'{ip}' is {own[ip]} of the lab's subnet {subnet}",
                      f"give the host an address from {subnet.network_address + 3} to "
                      f"{subnet.broadcast_address - 1}, or the lab another subnet")
