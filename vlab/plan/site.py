"""The plan of a PXE tree: each PXE-booting machine's name, MAC, address, firmware and kernel
command line, built once by the command-line builder. Pure; a part of the plan (plan.py makes
one for the scenario's [[machine]]s and one for the lab's own boot = "pxe" terminals)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from vlab.errors import ScenarioError
from vlab.plan.cmdline import kernel_cmdline, machines_nfs, root_path_by_dhcp, root_target
from vlab.scenario.model import NFS_HOST, Addresses, Arch, Firmware, Netboot, RootVia, Scenario

KERNEL = "vmlinuz"
INITRD = "initrd.img"
HTTP_DIR = "http"  # the RAM disk images UEFI HTTP-booting hosts load (build/httpboot.py)
# Where a site's web server serves the tree unless [pxe] http_url says: the NFS server's.
HTTP_PATH = "/vlab/"
# Debian's signed network GRUB's built-in prefix: the folder it reads grub.cfg from (the
# tree's writer checks the installed image says the same, efi.loaders()).
GRUB_DIR = "grub"
# x86 Linux takes at most 2047 characters of command line (COMMAND_LINE_SIZE 2048), and
# that is what pxelinux hands over from APPEND.
MAX_APPEND = 2047
# The screen, and the serial line a twin reads: the PC's first, the arm64 virt machine's PL011.
CONSOLES = {Arch.AMD64: ["console=tty0", "console=ttyS0"],
            Arch.ARM64: ["console=tty0", "console=ttyAMA0"]}


@dataclass(frozen=True)
class Booter:
    """What the scenario says of one PXE-booting machine: a [[machine]] or a terminal."""

    key: str  # where the scenario names it: "machine[1]", "terminal[0]"
    name: str
    mac: str
    ip: ipaddress.IPv4Address | None
    export: str | None  # the export it mounts instead of the lab's (the page's root=SERVER:/path)
    cmdline: str  # the scenario's own words
    firmware: Firmware
    netboot: Netboot = Netboot.TFTP


@dataclass(frozen=True)
class MachinePlan:
    key: str  # where the scenario names it (for errors found when the tree is written)
    name: str
    mac: str
    ip: str | None
    cmdline: str  # the whole kernel command line it boots with
    root_path: str | None  # DHCP option 17, when the scenario hands the root out by DHCP
    firmware: Firmware = Firmware.BIOS
    netboot: Netboot = Netboot.TFTP

    @property
    def append(self) -> str:
        """pxelinux's APPEND line: the initrd, and the kernel command line."""
        return append_line(self.cmdline)

    @property
    def pxelinux_name(self) -> str:
        """The page's mac_address_to_filename: 01- and the MAC, lowercase, dashes."""
        return "01-" + self.mac.lower().replace(":", "-")

    @property
    def ipxe_script(self) -> str:
        return ipxe_script(self.mac)

    @property
    def http_image(self) -> str:
        return http_image(self.mac)

    @property
    def hexip_name(self) -> str | None:
        return f"{int(ipaddress.IPv4Address(self.ip)):08X}" if self.ip else None


@dataclass(frozen=True)
class Site:
    """A PXE tree's plan: its machines, and what the default config and snippets say."""

    server: str
    subnet: str
    export_path: str
    root_squash: bool
    default_cmdline: str  # what a machine without a file of its own boots with
    machines: tuple[MachinePlan, ...]
    http_url: str = ""  # where the site's web server serves the tree, ending in "/"
    grub_dir: str = GRUB_DIR
    arch: Arch = Arch.AMD64  # its machines' (one scenario, one architecture)
    # The TFTP server as DHCPv4's next server names it ("": an IPv6-only site), and as
    # DHCPv6's boot file URL does, bracketed ("": an IPv4 site).
    tftp4: str = ""
    tftp6: str = ""

    @property
    def default_append(self) -> str:
        return append_line(self.default_cmdline)

    @property
    def firmwares(self) -> tuple[Firmware, ...]:
        """The firmwares of the site's machines, in a fixed order."""
        return tuple(f for f in Firmware if any(m.firmware is f for m in self.machines))

    @property
    def uefi(self) -> bool:
        return any(f is not Firmware.BIOS for f in self.firmwares)

    def by(self, netboot: Netboot) -> tuple[MachinePlan, ...]:
        return tuple(m for m in self.machines if m.netboot is netboot)

    @property
    def http_path(self) -> str:
        """The path part of http_url: where the web server serves the tree."""
        return "/" + self.http_url.split("://", 1)[-1].partition("/")[2]


def ipxe_script(mac: str) -> str:
    """A host's iPXE script, by path relative to the tree's root."""
    return mac.lower().replace(":", "-") + ".ipxe"


def http_image(mac: str) -> str:
    """The RAM disk image a UEFI HTTP-booting host loads, relative to the tree's root."""
    return f"{HTTP_DIR}/{mac.lower().replace(':', '-')}.img"


def append_line(cmdline: str) -> str:
    return f"initrd={INITRD} {cmdline}"


def site(scenario: Scenario, booters: tuple[Booter, ...], nfs_server: str,
         option_port: int | None, export_path: str, subnet: str, root_squash: bool,
         ssh_key: str = "") -> Site:
    """The tree of `booters`: their command lines (the lab's SSH key on theirs, none on the
    default's) and DHCP root paths; an APPEND line Linux would cut is an error here."""
    server, options = machines_nfs(scenario, nfs_server, option_port)
    by_dhcp = scenario.lab.root_via is RootVia.DHCP

    def cmdline(b: Booter | None) -> str:
        b_server, path = root_target(b.export if b else None, server, export_path)
        given = not by_dhcp or (b is not None and b.export is not None)
        # vlab.pxe names the config file that booted the machine: its console shows which.
        extra = f"vlab.pxe={b.name if b else 'default'}"
        if b and b.cmdline:
            extra += f" {b.cmdline}"
        words = kernel_cmdline(scenario, b_server if given else None, path, options,
                               CONSOLES[scenario.arch],
                               extra, b.mac if b else None, ssh_key if b else "",
                               b.name if b else "")
        size = len(append_line(words).encode())
        if size > MAX_APPEND:
            raise ScenarioError(scenario.path, f"{b.key}.cmdline" if b else "machine",
                                f"the APPEND line is {size} bytes; Linux takes at most "
                                f"{MAX_APPEND}", "shorten the cmdline words")
        return words

    machines = tuple(MachinePlan(
        key=b.key, name=b.name, mac=b.mac, ip=str(b.ip) if b.ip else None, cmdline=cmdline(b),
        root_path=root_path_by_dhcp(scenario, b.export, server, export_path, options),
        firmware=b.firmware, netboot=b.netboot,
    ) for b in booters)
    return Site(server=server, subnet=subnet, export_path=export_path, root_squash=root_squash,
                default_cmdline=cmdline(None), machines=machines,
                http_url=scenario.pxe.http_url or f"http://{server}{HTTP_PATH}",
                arch=scenario.arch, **_tftp_servers(scenario, server, subnet))


def _tftp_servers(scenario: Scenario, server: str, subnet: str) -> dict[str, str]:
    """Where DHCP sends a PXE client for its loader: the NFS server, by IPv4 (DHCPv4's next
    server) and by IPv6 (DHCPv6's boot file URL) as the lab's addresses have it. A dual-stack
    site's UEFI hosts boot over IPv6, its BIOS hosts over IPv4 (SeaBIOS's iPXE ROM has no
    PXE over IPv6)."""
    addresses = scenario.lab.addresses
    if addresses is Addresses.IPV4:
        return {"tftp4": server, "tftp6": ""}
    v4 = str(ipaddress.IPv4Network(subnet).network_address + NFS_HOST)
    return {"tftp4": v4 if addresses is Addresses.DUAL else "", "tftp6": server}
