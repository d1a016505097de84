"""The `[[terminal]]` tables: each terminal's NIC, MAC, memory, boot and firmware, its export
and command line words."""

from __future__ import annotations

import re

from vlab.scenario.model import (
    MAC_PREFIX,
    UEFI_PXE_MEMORY,
    Arch,
    Boot,
    Firmware,
    Hypervisor,
    NicDriver,
    Terminal,
)
from vlab.scenario.table import Table

_TERMINAL_KEYS = ("name", "boot", "nic", "mac", "memory", "vcpus", "export", "dhcp_root_path",
                  "cmdline", "node", "firmware", "arch")
DHCP_ROOT_RE = re.compile(r"^((nfs|nfs4):)?([0-9.]+:)?/[A-Za-z0-9._/-]*([:,][A-Za-z0-9=.,_-]+)?$")


def _firmware(t: Table, boot: Boot, memory: int, xen: bool, arch: Arch) -> Firmware:
    """A terminal's firmware: SeaBIOS, or OVMF (UEFI; with Secure Boot, PXE through shim).
    An arm64 terminal has no BIOS: "bios" is direct kernel boot without firmware there, and
    a PXE one boots by AAVMF (UEFI), its firmware unless it says uefi-secure."""
    default = Firmware.UEFI if arch is Arch.ARM64 and boot is Boot.PXE else Firmware.BIOS
    firmware = t.choice("firmware", Firmware, default)
    if firmware is Firmware.BIOS and arch is Arch.ARM64 and boot is Boot.PXE:
        raise t.error("firmware", '"bios" for an arm64 terminal that boots by PXE: arm64 '
                      "machines have UEFI (AAVMF), no BIOS",
                      'use firmware = "uefi" or "uefi-secure", or leave firmware out')
    if firmware is Firmware.BIOS:
        return firmware
    if xen:
        raise t.error("firmware", f'"{firmware.value}" is not a firmware of a Xen PV guest',
                      'leave firmware out (Xen PV guests start the kernel directly)')
    if firmware is Firmware.UEFI_SECURE and boot is Boot.KERNEL:
        raise t.error("firmware", '"uefi-secure" with boot = "kernel": OVMF with Secure Boot '
                      "starts only what Microsoft's keys sign, and a kernel is signed by its "
                      "distribution", 'use boot = "pxe" (shim checks the kernel, as on a real '
                      'host) or firmware = "uefi"')
    if boot is Boot.PXE and memory < UEFI_PXE_MEMORY:
        raise t.error("memory", f"{memory} MiB is too little for GRUB under OVMF to load the "
                      "kernel and initrd over the network",
                      f"use memory = {UEFI_PXE_MEMORY} or more")
    return firmware


def terminals(top: Table, nics: tuple[NicDriver, ...], hypervisor: Hypervisor,
               required: bool = True) -> tuple[Terminal, ...]:
    if "terminal" not in top.data:
        if not required:
            return ()
        raise top.error("terminal", "no terminals",
                        'add at least one [[terminal]] table with name = "t1"')
    raw = top.tables("terminal", "write each terminal as a [[terminal]] table")
    terminals: list[Terminal] = []
    seen_names: dict[str, int] = {}
    seen_macs: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = Table(top.file, f"terminal[{i}]", item, _TERMINAL_KEYS)
        name = t.unique_name(seen_names, i, "terminal")
        mac = t.mac(seen_macs, i)
        prefix = MAC_PREFIX[hypervisor]
        if mac is not None and not mac.startswith(prefix):
            raise t.error("mac", f"{mac!r} is outside {hypervisor.value}'s range {prefix}",
                          f'use a MAC that starts with {prefix}, e.g. "{prefix}:12:34:56", '
                          "or leave it out to pin one")
        export = t.export()
        dhcp_root = t.get("dhcp_root_path", str, "") or None
        if dhcp_root is not None and not DHCP_ROOT_RE.fullmatch(dhcp_root):
            raise t.error("dhcp_root_path", f"{dhcp_root!r} is not a DHCP root path",
                          'write "/path", "server:/path", "nfs:server:/path:options" '
                          'or "nfs4:server:/path"')
        cmdline = t.cmdline()
        nic = t.choice("nic", NicDriver, nics[0])
        xen = hypervisor is Hypervisor.XEN
        if xen != (nic is NicDriver.XEN_NETFRONT):
            raise t.error("nic", f'"{nic.value}" is not a NIC of a {hypervisor.value} guest',
                          'use "xen-netfront" for hypervisor = "xen"' if xen else
                          'use "virtio_net" or "e1000" (xen-netfront is for hypervisor = "xen")')
        boot = t.choice("boot", Boot, Boot.KERNEL)
        if xen and boot is Boot.PXE:
            raise t.error("boot", '"pxe" needs a PXE ROM in the NIC, and a Xen PV/PVH guest '
                          "has none", 'use boot = "kernel" (vlab pxe --check proves PXE files '
                          "with QEMU twins)")
        if nic not in nics:
            raise t.error("nic", f'"{nic.value}" is not in [initrd] nic_drivers',
                          f'add "{nic.value}" to nic_drivers, or use one of them')
        memory = t.int_in("memory", 256, 128, 65536, " MiB")
        arch = t.choice("arch", Arch, Arch.AMD64)
        if arch is Arch.ARM64 and xen:
            raise t.error("arch", '"arm64" in a Xen lab: vlab runs Xen guests on x86 hosts',
                          'leave arch out, or use hypervisor = "qemu" (an arm64 terminal runs '
                          "under qemu-system-aarch64)")
        firmware = _firmware(t, boot, memory, xen, arch)
        terminals.append(Terminal(
            name=name, boot=boot, nic=nic, mac=mac, memory=memory,
            vcpus=t.int_in("vcpus", 1, 1, 64),
            export=export, dhcp_root_path=dhcp_root, cmdline=cmdline,
            node=t.get("node", str, "") or None, firmware=firmware, arch=arch,
        ))
    return tuple(terminals)


