"""The plan's types: every decision about a lab, as frozen dataclasses (what follows from a
decision is a property), and where vlab keeps its cache and state. make.py makes them."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vlab.plan.cmdline import (
    MOUNT_PORT_OFFSET,
    nfs_options,
)
from vlab.plan.lease import server_mac
from vlab.plan.site import Site
from vlab.scenario.model import (
    LAB_HOST,
    LOCAL,
    NFS_HOST,
    Addresses,
    AfterBoot,
    Arch,
    Firmware,
    Hypervisor,
    InitrdBuilder,
    KernelSource,
    LabHostMode,
    Netboot,
    NfsVersion,
    NicDriver,
    RootSource,
    Writable,
)

FIRST_TERMINAL_HOST = 10
NETNS = "vlab-host"
# A lab's NFS server has a network namespace of its own, joined to the lab bridge, at the lab
# network's .2 (the lab host is .1, DHCP and TFTP; terminals from .10): there it listens where
# a site's server does, so root paths and mount options are a site's. (Not for labs with
# [[node]]s: their terminals reach the server through the lab host's namespace.)
NFS_PORT = 2049
NFS40_RE = re.compile(r"(?<![\w.])(?:nfs)?vers=4\.0(?![\d.])|(?<![\w.])minorversion=0\b")
MOUNT_PORT = 20048  # mountd's usual port (nfs-utils' nfs.conf), found through rpcbind
NFS_NETNS_PREFIX = "vlab-nfs-"
# x86 Linux keeps COMMAND_LINE_SIZE - 1 bytes of its command line and cuts the rest.
MAX_CMDLINE_BYTES = 2047
TWIN_SAMPLE = 4  # PXE machines that get a virtual twin (the rest are alike)
DOMAIN_TYPES = {Hypervisor.KVM: "kvm", Hypervisor.QEMU: "qemu", Hypervisor.XEN: "xen"}


# The libvirt NIC model that each guest driver drives.
NIC_MODELS = {NicDriver.VIRTIO_NET: "virtio", NicDriver.E1000: "e1000",
              NicDriver.XEN_NETFRONT: "netfront"}
# Where the kernel's console is: QEMU's first serial port, Xen's PV console.
CONSOLE = {Hypervisor.KVM: "console=ttyS0", Hypervisor.QEMU: "console=ttyS0",
           Hypervisor.XEN: "console=hvc0"}
# ...an arm64 terminal's: the virt machine's PL011 UART.
ARM64_CONSOLE = "console=ttyAMA0"


@dataclass(frozen=True)
class Dirs:
    """Where vlab keeps its cache (shared artifacts) and its state (one folder per lab)."""

    cache: Path
    state: Path

    @classmethod
    def from_env(cls) -> Dirs:
        # QEMU runs as libvirt-qemu and must reach the kernel and initrd, so root's
        # defaults are in /var, not in /root (mode 0700).
        if os.geteuid() == 0:
            cache, state = Path("/var/cache/vlab"), Path("/var/lib/vlab")
        else:
            home = Path.home()
            cache = Path(os.environ.get("XDG_CACHE_HOME", home / ".cache")) / "vlab"
            state = Path(os.environ.get("XDG_STATE_HOME", home / ".local/state")) / "vlab"
        return cls(
            cache=Path(os.environ.get("VLAB_CACHE_DIR", cache)),
            state=Path(os.environ.get("VLAB_STATE_DIR", state)),
        )


@dataclass(frozen=True)
class TerminalPlan:
    name: str
    domain: str
    nic_model: str
    mac: str
    ip: str  # pinned by the lab's DHCP; "" on another node (its network's DHCP decides)
    memory_mib: int
    vcpus: int
    dhcp_root_path: str | None
    cmdline: str
    console_log: Path
    boot: str = "kernel"  # "kernel": direct kernel boot; "pxe": the NIC's PXE ROM
    node: str = LOCAL  # the node it runs on
    firmware: Firmware = Firmware.BIOS
    nvram: Path | None = None  # a UEFI guest's copy of OVMF's variable store
    netboot: Netboot = Netboot.TFTP  # a PXE twin's: how its firmware fetches what it boots
    ip6: str = ""  # its SLAAC address in an IPv6 lab (its prefix and pinned MAC), else ""


@dataclass(frozen=True)
class NodePlan:
    """A node of the lab: the lab host itself (LOCAL), or one of its [[node]]s."""

    name: str
    uri: str
    netns: str | None  # vlab reaches another node from inside this namespace
    network: str  # the libvirt network its terminals join (or "")
    bridge: str  # ...or the bridge (or "")
    files_dir: Path  # the boot files as that node's QEMU reads them

    @property
    def remote(self) -> bool:
        return self.name != LOCAL

    @property
    def kernel_path(self) -> Path:
        return self.files_dir / "vmlinuz"

    @property
    def initrd_path(self) -> Path:
        return self.files_dir / "initrd.img"

    @property
    def efi_kernel_path(self) -> Path:
        """The bzImage, for terminals under OVMF (its EFI stub; OVMF cannot start PVH)."""
        return self.files_dir / "vmlinuz.efi"


@dataclass(frozen=True)
class LabPlan:
    """Every decision about a lab; what follows from these fields is a property."""

    name: str  # the lab's name
    scenario: Path
    uri: str
    lab_host: LabHostMode
    hypervisor: Hypervisor
    bridge: str
    attempt: int  # > 0 when subnet, NFS port or bridge had to dodge another lab's
    subnet: ipaddress.IPv4Network
    nfs_version: NfsVersion
    nfs_port: int
    nfs_netns: str | None  # the NFS server's own namespace; None: the lab host's
    export_path: Path
    lab_dir: Path
    root_source: RootSource
    root_image: Path | None
    root_partition: int | str | None  # image: as the scenario names it (None: found)
    boot_partition: int | str | None
    debian_suite: str
    debian_packages: tuple[str, ...]
    kernel_source: KernelSource
    kernel_package: str
    kernel_version: str | None
    builder: InitrdBuilder
    nic_drivers: tuple[NicDriver, ...]
    arch: Arch  # the terminals' (and twins'): the root's, the kernel's and the initrd's
    writable: Writable
    after_boot: AfterBoot
    timeout: int
    stall: int
    dhcp_lease: int | None  # the lab network's DHCP lease (s); None: libvirt's
    terminals: tuple[TerminalPlan, ...]
    nodes: tuple[NodePlan, ...]  # the lab host first
    nfs_clients: tuple[ipaddress.IPv4Network, ...]  # the subnets its NFS server admits
    # The lab's SSH public key (base64 of an ssh-ed25519 blob), on the terminals' command
    # lines; made by sshkeys.py when the lab is built, empty in a pure plan.
    ssh_key: str = ""
    # Twins of a site with its own NFS server ([pxe] nfs_server): the files they boot name
    # that address, and in the lab vlab's server answers at it (and is their router).
    stand_in: str | None = None
    # The PXE trees: `vlab pxe`'s, of the scenario's [[machine]]s; the lab's own, of its
    # boot = "pxe" terminals (in tftp_dir). None: no such machine.
    site: Site | None = None
    tftp_tree: Site | None = None
    addresses: Addresses = Addresses.IPV4  # the lab network's families ([lab] addresses)

    netns = NETNS  # the isolated lab host's network namespace

    @property
    def domain_type(self) -> str:
        return DOMAIN_TYPES[self.hypervisor]

    @property
    def gateway(self) -> str:
        """The lab host's address on the lab network: DHCP and TFTP (and the NFS server of
        a lab with other hypervisor hosts)."""
        return str(self.subnet.network_address + LAB_HOST)

    @property
    def ipv6_subnet(self) -> str:
        """The lab network's IPv6 /64 (an IPv6 lab's, and a PXE lab's: iPXE waits for a
        router advertisement); the lab host is its ::1, the NFS server ::2."""
        return str(ipv6_subnet(self.subnet))

    @property
    def ipv6(self) -> bool:
        """The terminals have IPv6 addresses and mount the root over IPv6."""
        return self.addresses is not Addresses.IPV4

    @property
    def ipv4(self) -> bool:
        """The terminals have IPv4 addresses (by the lab's DHCP)."""
        return self.addresses is not Addresses.IPV6

    @property
    def ipv6_gateway(self) -> str:
        return str(ipv6_subnet(self.subnet).network_address + LAB_HOST)

    @property
    def dhcp6_start(self) -> str:
        """The DHCPv6 range PXE firmware takes its addresses from (terminals' own are SLAAC's)."""
        return str(ipv6_subnet(self.subnet).network_address + 0x100)

    @property
    def dhcp6_end(self) -> str:
        return str(ipv6_subnet(self.subnet).network_address + 0x1FF)

    @property
    def nfs_address6(self) -> str:
        """The NFS server's IPv6 address, in its own namespace (an IPv6 lab has one)."""
        return str(ipv6_subnet(self.subnet).network_address + NFS_HOST)

    @property
    def dnsmasq_log(self) -> Path:
        """What the lab network's dnsmasq saw (DHCP and TFTP), beside the consoles."""
        return self.lab_dir / "console" / "dnsmasq.log"

    @property
    def dhcp_start(self) -> str:
        return str(self.subnet.network_address + FIRST_TERMINAL_HOST)

    @property
    def dhcp_end(self) -> str:
        return str(self.subnet.broadcast_address - 1)

    @property
    def nfs_address(self) -> str:
        return nfs_address(self.subnet, self.nfs_netns)

    @property
    def option_port(self) -> int | None:
        """The NFS port mount options must name: None where the server listens on 2049."""
        return None if self.nfs_netns else self.nfs_port

    @property
    def mount_port(self) -> int:
        return MOUNT_PORT if self.nfs_netns else self.nfs_port + MOUNT_PORT_OFFSET

    @property
    def nfs40_clients(self) -> tuple[str, ...]:
        """The terminals that mount NFSv4.0 (their own root=, rootflags= or DHCP root path
        say vers=4.0): ganesha.conf.j2 says why their export is writable to ganesha."""
        return tuple(sorted({t.ip for t in self.terminals if t.ip and NFS40_RE.search(
            f"{t.cmdline} {t.dhcp_root_path or ''}")}))

    @property
    def nfs_link(self) -> str:
        """The lab host's end of the veth pair into the server's namespace."""
        return "vn" + self.bridge.removeprefix("vlab")

    @property
    def nfs_mac(self) -> str:
        """The server's end of the veth pair: pinned, as a terminal's MAC is."""
        return server_mac(self.name)

    @property
    def nfs_options(self) -> str:
        return nfs_options(self.nfs_version, self.option_port)

    @property
    def root_squash(self) -> bool:
        """The page exports with no_root_squash: a distribution root's init must read files
        only root may read (/etc/shadow, keys). vlab's busybox root has none: squashed."""
        return root_squash(self.root_source)

    @property
    def network(self) -> str:
        return self.node(LOCAL).network

    @property
    def kernel_path(self) -> Path:
        return self.node(LOCAL).kernel_path

    @property
    def initrd_path(self) -> Path:
        return self.node(LOCAL).initrd_path

    @property
    def nfs_server_dir(self) -> Path:
        return self.lab_dir / "nfs"

    @property
    def http_url(self) -> str:
        """Where the lab's web server serves the twins' tree: its address, the site's path."""
        return f"http://{self.gateway}{self.site.http_path if self.site else '/'}"

    @property
    def tftp_dir(self) -> Path:  # only for terminals with boot = "pxe"
        return self.lab_dir / "tftp"

    @property
    def busy_nodes(self) -> tuple[NodePlan, ...]:
        """The lab host, and every other node that runs one of the lab's terminals."""
        return tuple(h for h in self.nodes if not h.remote or self.on(h))

    def relayed(self, t: TerminalPlan) -> bool:
        """vlab copies its console to t.console_log (while a vlab command runs): another
        node's QEMU log is not readable here, and libxl logs no console to a file."""
        return t.node != LOCAL or self.hypervisor is Hypervisor.XEN

    def terminal(self, name: str) -> TerminalPlan | None:
        return next((t for t in self.terminals if t.name == name), None)

    def node(self, name: str) -> NodePlan:
        return next(h for h in self.nodes if h.name == name)

    def on(self, node: NodePlan) -> tuple[TerminalPlan, ...]:
        return tuple(t for t in self.terminals if t.node == node.name)


def ipv6_subnet(subnet: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    """The lab's IPv6 /64 (a unique local prefix), from its IPv4 /24."""
    return ipaddress.IPv6Network(f"fd00:213:{subnet.network_address.packed[2]:x}::/64")


def slaac_address(prefix: ipaddress.IPv6Network, mac: str) -> str:
    """The address SLAAC gives a NIC of this MAC (RFC 4291's modified EUI-64; Linux's default
    for an interface without stable-privacy addresses, as an initrd's is)."""
    octets = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:]])
    return str(prefix.network_address + int.from_bytes(eui, "big"))


def root_squash(source: RootSource) -> bool:
    return source is RootSource.BUSYBOX


def nfs_address(subnet: ipaddress.IPv4Network, nfs_netns: str | None) -> str:
    """Where terminals mount the root: the server's own namespace (.2), or the lab host."""
    return str(subnet.network_address + (LAB_HOST if nfs_netns is None else NFS_HOST))


def domain_name(lab: str, terminal: str) -> str:
    return f"vlab-{lab}-{terminal}"
