"""PXE for physical hosts: the site plan and every file of the TFTP tree and the DHCP/NFS
snippets, rendered from the same scenario as the lab (pure; tftp.py writes them)."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from vlab import render
from vlab.errors import ScenarioError
from vlab.plan import LabPlan, dhcp_root_path, kernel_cmdline, root_target
from vlab.scenario import Host, NfsVersion, RootVia, Scenario

KERNEL = "vmlinuz"
INITRD = "initrd.img"
BOOTLOADER = "pxelinux.0"
# x86 Linux takes at most 2047 characters of command line (COMMAND_LINE_SIZE 2048), and
# that is what pxelinux hands over from APPEND.
MAX_APPEND = 2047
CONSOLES = ["console=tty0", "console=ttyS0"]  # the screen, and the serial line a twin reads


@dataclass(frozen=True)
class HostPlan:
    name: str
    mac: str
    ip: str | None
    append: str  # the APPEND line: initrd=... and the kernel command line
    root_path: str | None  # DHCP option 17, when the scenario hands the root out by DHCP

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
    default_append: str
    hosts: tuple[HostPlan, ...]


def terminal_hosts(scenario: Scenario, lab: LabPlan) -> tuple[Host, ...]:
    """The lab's own terminals with boot = "pxe", as hosts of the lab's TFTP tree (with the
    lab's SSH key, as direct kernel boot gives it)."""
    key = f"vlab.sshkey={lab.ssh_key}" if lab.ssh_key else ""
    return tuple(
        Host(name=tp.name, mac=tp.mac, ip=ipaddress.IPv4Address(tp.ip), root=t.root,
             cmdline=" ".join(w for w in (t.cmdline, key) if w))
        for t, tp in zip(scenario.terminals, lab.terminals, strict=True) if tp.boot == "pxe")


def site_plan(scenario: Scenario, lab: LabPlan, hosts: tuple[Host, ...] | None = None) -> Site:
    """Names, addresses and command lines of every PXE host; lint errors before any write."""
    if hosts is None:
        hosts = scenario.pxe.hosts
    explicit = scenario.pxe.nfs_server
    server = str(explicit) if explicit else lab.gateway
    # A real NFS server listens on 2049; vlab's own (for the twins) on the lab's port.
    options = f"vers={lab.nfs_version.value}" if explicit else lab.nfs_options
    if explicit and lab.nfs_version is NfsVersion.V3:
        options += ",nolock"
    export = str(lab.export_path)

    by_dhcp = scenario.lab.root_via is RootVia.DHCP

    def root_of(host: Host | None) -> tuple[str, str]:
        return root_target(host.root if host else None, server, export)

    def append(host: Host | None) -> str:
        h_server, path = root_of(host)
        given = not by_dhcp or (host is not None and host.root is not None)
        # vlab.pxe names the config file that booted the host: its console shows which.
        extra = f"vlab.pxe={host.name if host else 'default'}"
        if host and host.cmdline:
            extra += f" {host.cmdline}"
        line = f"initrd={INITRD} " + kernel_cmdline(
            scenario, h_server if given else None, path, options, CONSOLES, extra,
            host.mac if host else None)
        if len(line) > MAX_APPEND:
            where = f"host[{hosts.index(host)}].cmdline" if host else "host"
            raise ScenarioError(scenario.path, where, f"the APPEND line is {len(line)} "
                                f"characters; Linux takes at most {MAX_APPEND}",
                                "shorten the cmdline words")
        return line

    plans = tuple(HostPlan(
        name=h.name, mac=h.mac, ip=str(h.ip) if h.ip else None, append=append(h),
        root_path=dhcp_root_path(scenario.initrd.builder, lab.nfs_version, *root_of(h),
                                 options) if by_dhcp else None,
    ) for h in hosts)
    return Site(server=server, subnet=str(lab.subnet), export_path=export,
                default_append=append(None), hosts=plans)


HOST_TEMPLATES = ("pxelinux.cfg.j2", "grub.cfg.j2", "ipxe.j2")


def host_files(h: HostPlan) -> dict[str, str]:
    """The files of one host, by path relative to the TFTP root."""
    cfg = render.template("pxelinux.cfg.j2", append=h.append, kernel=KERNEL, label=h.name)
    out = {f"pxelinux.cfg/{h.pxelinux_name}": cfg}
    if h.hexip_name:
        out[f"pxelinux.cfg/{h.hexip_name}"] = cfg
    out[f"grub.cfg-{h.pxelinux_name}"] = render.template(
        "grub.cfg.j2", h=h, kernel=KERNEL, initrd=INITRD)
    out[f"{h.mac.lower().replace(':', '-')}.ipxe"] = render.template(
        "ipxe.j2", h=h, kernel=KERNEL, initrd=INITRD)
    return out


def host_groups(site: Site) -> dict[str, tuple[str, Callable[[], dict[str, str]]]]:
    """Per host: a key of everything its files depend on, and how to render them. A host
    whose key is unchanged is not rendered again (10,000 hosts, one changed: 4 files)."""
    templates = hashlib.sha256("".join(map(render.source, HOST_TEMPLATES)).encode()).hexdigest()
    return {h.name: (hashlib.sha256(repr((templates, h)).encode()).hexdigest()[:20],
                     partial(host_files, h)) for h in site.hosts}


def shared_files(site: Site) -> dict[str, str]:
    """The files every host shares: the default config and the site snippets."""
    return {
        "pxelinux.cfg/default": render.template(
            "pxelinux.cfg.j2", append=site.default_append, kernel=KERNEL, label="default"),
        "vlab-site/exports": render.template(
            "exports-site.j2", path=site.export_path, subnet=site.subnet),
        "vlab-site/dhcpd.conf": render.template("dhcpd.conf.j2", site=site,
                                                bootloader=BOOTLOADER),
        "vlab-site/dnsmasq.conf": render.template("dnsmasq.conf.j2", site=site,
                                                  bootloader=BOOTLOADER),
    }


def files(site: Site) -> dict[str, str]:
    """Every text file of the site, by path relative to the TFTP root."""
    out = shared_files(site)
    for h in site.hosts:
        out.update(host_files(h))
    return out
