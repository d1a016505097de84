"""PXE for physical machines: the site plan and every file of the TFTP tree and the DHCP/NFS
snippets, rendered from the same scenario as the lab (pure; tftp.py writes them)."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from vlab import efi, render
from vlab.cmdline import kernel_cmdline, machines_nfs, root_path_by_dhcp, root_target
from vlab.errors import ScenarioError
from vlab.plan import LabPlan
from vlab.scenario.model import Firmware, Machine, RootVia, Scenario

KERNEL = "vmlinuz"
INITRD = "initrd.img"
BOOTLOADER = "pxelinux.0"
# The boot file DHCP hands each firmware (it tells by the client's architecture, option 93:
# 0 BIOS, 7 and 9 x86-64 UEFI). A UEFI host gets Debian's signed shim, Secure Boot or not; shim
# loads the signed network GRUB, which reads GRUB_DIR/grub.cfg (its built-in prefix).
BOOT_FILES = {Firmware.BIOS: BOOTLOADER, Firmware.UEFI: efi.SHIM, Firmware.UEFI_SECURE: efi.SHIM}
GRUB_DIR = "grub"  # Debian's signed GRUB's prefix (efi.loaders() reads it from the image)
# x86 Linux takes at most 2047 characters of command line (COMMAND_LINE_SIZE 2048), and
# that is what pxelinux hands over from APPEND.
MAX_APPEND = 2047
CONSOLES = ["console=tty0", "console=ttyS0"]  # the screen, and the serial line a twin reads


@dataclass(frozen=True)
class MachinePlan:
    name: str
    mac: str
    ip: str | None
    append: str  # the APPEND line: initrd=... and the kernel command line
    root_path: str | None  # DHCP option 17, when the scenario hands the root out by DHCP
    firmware: Firmware = Firmware.BIOS

    @property
    def pxelinux_name(self) -> str:
        """The page's mac_address_to_filename: 01- and the MAC, lowercase, dashes."""
        return "01-" + self.mac.lower().replace(":", "-")

    @property
    def hexip_name(self) -> str | None:
        return f"{int(ipaddress.IPv4Address(self.ip)):08X}" if self.ip else None

    @property
    def cmdline(self) -> str:
        return self.append.removeprefix(f"initrd={INITRD} ")


@dataclass(frozen=True)
class Site:
    server: str
    subnet: str
    export_path: str
    root_squash: bool
    default_append: str
    machines: tuple[MachinePlan, ...]
    grub_dir: str = GRUB_DIR

    @property
    def firmwares(self) -> tuple[Firmware, ...]:
        """The firmwares of the site's machines, in a fixed order."""
        return tuple(f for f in Firmware if any(m.firmware is f for m in self.machines))

    @property
    def uefi(self) -> bool:
        return any(f is not Firmware.BIOS for f in self.firmwares)


def terminal_machines(scenario: Scenario, lab: LabPlan) -> tuple[Machine, ...]:
    """The lab's own terminals with boot = "pxe", as machines of the lab's TFTP tree."""
    out = []
    for t in scenario.terminals:
        tp = lab.terminal(t.name)
        if tp is not None and tp.boot == "pxe":
            out.append(Machine(name=tp.name, mac=tp.mac, ip=ipaddress.IPv4Address(tp.ip),
                               root=t.root, cmdline=t.cmdline, firmware=tp.firmware))
    return tuple(out)


def site_plan(scenario: Scenario, lab: LabPlan, machines: tuple[Machine, ...] | None = None,
              ssh_key: str = "", grub_dir: str = GRUB_DIR) -> Site:
    """Names, addresses and command lines of every PXE machine (by default the scenario's
    [[host]]s; `ssh_key` for the lab's own terminals; `grub_dir` the folder GRUB reads);
    lint errors before any write."""
    if machines is None:
        machines = scenario.pxe.machines
    server, options = machines_nfs(scenario, lab.nfs_address, lab.option_port)
    export = str(lab.export_path)
    by_dhcp = scenario.lab.root_via is RootVia.DHCP

    def append(m: Machine | None) -> str:
        m_server, path = root_target(m.root if m else None, server, export)
        given = not by_dhcp or (m is not None and m.root is not None)
        # vlab.pxe names the config file that booted the machine: its console shows which.
        extra = f"vlab.pxe={m.name if m else 'default'}"
        if m and m.cmdline:
            extra += f" {m.cmdline}"
        line = f"initrd={INITRD} " + kernel_cmdline(
            scenario, m_server if given else None, path, options, CONSOLES, extra,
            m.mac if m else None, ssh_key if m else "")
        if len(line.encode()) > MAX_APPEND:
            where = f"host[{machines.index(m)}].cmdline" if m else "host"
            raise ScenarioError(scenario.path, where, f"the APPEND line is {len(line.encode())} "
                                f"bytes; Linux takes at most {MAX_APPEND}",
                                "shorten the cmdline words")
        return line

    plans = tuple(MachinePlan(
        name=m.name, mac=m.mac, ip=str(m.ip) if m.ip else None, append=append(m),
        root_path=root_path_by_dhcp(scenario, m.root, server, export, options),
        firmware=m.firmware,
    ) for m in machines)
    return Site(server=server, subnet=str(lab.subnet), export_path=export,
                root_squash=lab.root_squash, default_append=append(None), machines=plans,
                grub_dir=grub_dir)


def refuse_unsigned_kernel(scenario: Scenario, site: Site, image: bytes, release: str) -> None:
    """A Secure Boot machine gets a kernel shim can check: one without any signature would
    stop at GRUB's "bad shim signature" on every such host (lint, before any write)."""
    secure = [m.name for m in site.machines if m.firmware is Firmware.UEFI_SECURE]
    if not secure or efi.signed(image):
        return
    hosts = [m.name for m in scenario.pxe.machines]
    first = secure[0]
    where = (f"host[{hosts.index(first)}].firmware" if first in hosts else
             f"terminal[{[t.name for t in scenario.terminals].index(first)}].firmware")
    raise ScenarioError(scenario.path, where, f"Secure Boot for {', '.join(secure[:5])}"
                        f"{' and more' if len(secure) > 5 else ''}, but the kernel "
                        f"({release}) carries no signature, and shim starts no unsigned "
                        "kernel", 'use a signed one ([kernel] source = "debian": Debian\'s '
                        "is), sign this one with a key the hosts trust (sbsign, and enroll "
                        'it with mokutil), or set firmware = "uefi"')


MACHINE_TEMPLATES = ("pxe/pxelinux.cfg.j2", "pxe/grub.cfg.j2", "pxe/ipxe.j2")


def machine_files(m: MachinePlan, grub_dir: str = GRUB_DIR) -> dict[str, str]:
    """The files of one machine, by path relative to the TFTP root."""
    cfg = render.template("pxe/pxelinux.cfg.j2", append=m.append, kernel=KERNEL, label=m.name)
    out = {f"pxelinux.cfg/{m.pxelinux_name}": cfg}
    if m.hexip_name:
        out[f"pxelinux.cfg/{m.hexip_name}"] = cfg
    # GRUB's own name for a host's network config, in the folder it reads.
    out[f"{grub_dir}/grub.cfg-{m.pxelinux_name}"] = render.template(
        "pxe/grub.cfg.j2", h=m, kernel=KERNEL, initrd=INITRD)
    out[f"{m.mac.lower().replace(':', '-')}.ipxe"] = render.template(
        "pxe/ipxe.j2", h=m, kernel=KERNEL, initrd=INITRD)
    return out


def machine_groups(site: Site) -> dict[str, tuple[str, Callable[[], dict[str, str]]]]:
    """Per machine: a key of everything its files depend on, and how to render them. A
    machine whose key is unchanged is not rendered again (10,000 of them, one changed: 4 files)."""
    templates = hashlib.sha256("".join(map(render.static, MACHINE_TEMPLATES)).encode()).hexdigest()
    return {m.name: (hashlib.sha256(repr((templates, site.grub_dir, m)).encode()).hexdigest()[:20],
                     partial(machine_files, m, site.grub_dir)) for m in site.machines}


def shared_files(site: Site) -> dict[str, str]:
    """The files every machine shares: the default config and the site snippets."""
    return {
        "pxelinux.cfg/default": render.template(
            "pxe/pxelinux.cfg.j2", append=site.default_append, kernel=KERNEL, label="default"),
        f"{site.grub_dir}/grub.cfg": render.template(
            "pxe/grub-default.cfg.j2", cmdline=site.default_append.removeprefix(
                f"initrd={INITRD} "), kernel=KERNEL, initrd=INITRD),
        "vlab-site/exports": render.template(
            "nfs/exports-site.j2", path=site.export_path, subnet=site.subnet,
            root_squash=site.root_squash),
        "vlab-site/dhcpd.conf": render.template("pxe/dhcpd.conf.j2", site=site,
                                                bootloader=BOOTLOADER, shim=efi.SHIM),
        "vlab-site/dnsmasq.conf": render.template("pxe/dnsmasq.conf.j2", site=site,
                                                  bootloader=BOOTLOADER, shim=efi.SHIM),
    }
