"""The scenario model: a lab as the user wrote it, in frozen dataclasses and StrEnums.

Only user configuration lives here: runtime state is in state.py, derived values in plan/.
The words: a *terminal* boots over NFS; the *lab host* is the libvirtd that runs the lab (the
system one or vlab's isolated one, `[lab] lab_host`); a *node* is a hypervisor host that runs some
of its terminals (`[[node]]`, or the lab host itself, LOCAL); a *machine* is a physical
computer that PXE-boots the lab's root (`[[machine]]`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
# Terminal MACs live in the hypervisor's own range (the page's vif mac= advice for Xen).
# (plan.py pins MACs in the same ranges)
MAC_PREFIX = {"kvm": "52:54:00", "qemu": "52:54:00", "xen": "00:16:3e"}
# Never a dir root (exported whole, read by its builder) nor a folder vlab ships into.
SYSTEM_DIRS = frozenset(Path(p) for p in (
    "/", "/bin", "/boot", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media",
    "/mnt", "/opt", "/root", "/sbin", "/srv", "/tmp", "/usr", "/usr/local", "/usr/lib",
    "/usr/share", "/var", "/var/lib", "/var/cache", "/var/log", "/var/tmp", "/var/lib/libvirt"))
# What an export path may hold: it goes unquoted into ganesha.conf, exports and root=.
EXPORT_PATH_RE = re.compile(r"/[A-Za-z0-9._+@,/-]*")
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
NAME_FIX = "use 1-24 characters: lowercase letters, digits and '-', starting with a letter"
LOCAL = "local"  # the lab's own node: [lab] uri, with the network and NFS server vlab makes
SHIP_DIR = "/var/cache/vlab/shipped"


class Hypervisor(StrEnum):
    KVM = "kvm"
    QEMU = "qemu"
    XEN = "xen"


class LabHostMode(StrEnum):
    """`[lab] lab_host`: which libvirtd runs the lab."""

    AUTO = "auto"
    SYSTEM = "system"
    ISOLATED = "isolated"


class NfsVersion(StrEnum):
    V3 = "3"
    V4 = "4"
    V4_1 = "4.1"
    V4_2 = "4.2"


class RootSource(StrEnum):
    BUSYBOX = "busybox"
    DIR = "dir"
    IMAGE = "image"
    DEBIAN = "debian"


class AfterBoot(StrEnum):
    SHELL = "shell"
    POWEROFF = "poweroff"


class RootVia(StrEnum):
    CMDLINE = "cmdline"
    DHCP = "dhcp"


class Addresses(StrEnum):
    """`[lab] addresses`: the lab network's address families. IPv6 addresses come by SLAAC
    from the router advertisements of the lab's dnsmasq: each terminal's is its prefix and
    its pinned MAC (EUI-64), as stable as a DHCP pin."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"  # IPv6 only: no DHCPv4 on the lab network, the root mounted over IPv6
    DUAL = "dual"  # both: a DHCPv4 lease and a SLAAC address, the root mounted over IPv6


class Boot(StrEnum):
    KERNEL = "kernel"
    PXE = "pxe"


class Firmware(StrEnum):
    """What a PXE host (and its twin) boots with: SeaBIOS's PXE, UEFI's, UEFI with Secure
    Boot enforced."""

    BIOS = "bios"
    UEFI = "uefi"
    UEFI_SECURE = "uefi-secure"


class Netboot(StrEnum):
    """How a PXE host's firmware fetches what it boots: TFTP (pxelinux, or shim and GRUB),
    UEFI HTTP boot (a RAM disk image over HTTP), or iPXE (loaded over TFTP, then the host's
    script, kernel and initrd over HTTP)."""

    TFTP = "tftp"
    HTTP = "http"
    IPXE = "ipxe"


class Arch(StrEnum):
    """A terminal's or machine's CPU architecture, by Debian's name for it."""

    AMD64 = "amd64"
    ARM64 = "arm64"

    @property
    def libvirt(self) -> str:
        """libvirt's (and QEMU's) name of it."""
        return {Arch.AMD64: "x86_64", Arch.ARM64: "aarch64"}[self]


class Writable(StrEnum):
    NONE = "none"
    TMPFS = "tmpfs"
    OVERLAY = "overlay"


class KernelSource(StrEnum):
    DEBIAN = "debian"
    ROOT = "root"


class InitrdBuilder(StrEnum):
    VLAB = "vlab"
    INITRAMFS_TOOLS = "initramfs-tools"
    DRACUT = "dracut"


class NicDriver(StrEnum):
    VIRTIO_NET = "virtio_net"
    E1000 = "e1000"
    XEN_NETFRONT = "xen-netfront"  # the page's xennet


# MiB: GRUB under OVMF cannot allocate the kernel and initrd in less ("out of memory").
UEFI_PXE_MEMORY = 512


# The lab's own addresses on its network, by host number: the lab host (its bridge, DHCP and
# TFTP) and the lab's NFS server; no machine of a scenario may have them.
LAB_HOST, NFS_HOST = 1, 2


@dataclass(frozen=True)
class Lab:
    name: str
    hypervisor: Hypervisor
    uri: str
    lab_host: LabHostMode  # the scenario key is `host`
    nfs_version: NfsVersion
    timeout: int
    stall: int  # seconds of console silence that count as a stalled guest
    subnet: ipaddress.IPv4Network | None
    root_via: RootVia
    addresses: Addresses = Addresses.IPV4
    dhcp_lease: int | None = None  # seconds; None: libvirt's (an hour)


@dataclass(frozen=True)
class Root:
    source: RootSource
    after_boot: AfterBoot
    writable: Writable
    path: Path | None  # dir and image
    suite: str  # debian
    packages: tuple[str, ...]  # debian
    partition: int | str | None = None  # image: the root's partition (number or label)
    boot_partition: int | str | None = None  # image: a /boot partition of its own


@dataclass(frozen=True)
class Kernel:
    source: KernelSource
    package: str
    version: str | None


@dataclass(frozen=True)
class Initrd:
    builder: InitrdBuilder
    nic_drivers: tuple[NicDriver, ...]


@dataclass(frozen=True)
class Terminal:
    name: str
    boot: Boot
    nic: NicDriver
    mac: str | None
    memory: int
    vcpus: int
    export: str | None  # the page's root=SERVER:/path override
    dhcp_root_path: str | None
    cmdline: str
    node: str | None = None  # a node's name or LOCAL (the key is `host`); None: placed by vlab
    firmware: Firmware = Firmware.BIOS
    arch: Arch = Arch.AMD64

    @property
    def anywhere(self) -> bool:
        """Can run on any node: PXE boots from the lab network's TFTP tree, OVMF and the
        variable store are the lab host's, and so is qemu-system-aarch64."""
        return (self.boot is Boot.KERNEL and self.firmware is Firmware.BIOS
                and self.arch is Arch.AMD64)


@dataclass(frozen=True)
class Machine:
    """A physical computer that PXE-boots the lab's root (`[[machine]]`, vlab pxe)."""

    name: str
    mac: str
    ip: ipaddress.IPv4Address | None
    export: str | None  # the page's root=SERVER:/path override
    cmdline: str
    firmware: Firmware = Firmware.BIOS
    netboot: Netboot = Netboot.TFTP
    arch: Arch = Arch.AMD64


@dataclass(frozen=True)
class Node:
    """Another hypervisor host the lab's terminals may run on (`[[node]]`)."""

    name: str
    uri: str  # qemu+ssh://[user@]host[:port]/system[?keyfile=...]
    capacity: int | None  # at most this many of the lab's terminals
    network: str | None  # an existing libvirt network there that its terminals join...
    bridge: str | None  # ...or an existing bridge
    nfs_server: ipaddress.IPv4Address  # the NFS server address as its terminals reach it
    clients: ipaddress.IPv4Network | None  # what the lab's NFS server admits from there
    netns: str | None  # vlab reaches it from inside this network namespace
    files: str  # where vlab ships the kernel and initrd there


@dataclass(frozen=True)
class Pxe:
    nfs_server: ipaddress.IPv4Address | None  # None: the lab's own server
    machines: tuple[Machine, ...]
    firmware: Firmware = Firmware.BIOS  # the hosts' default
    netboot: Netboot = Netboot.TFTP  # the hosts' default
    http_url: str = ""  # where the site's web server serves the tree ("": the NFS server's)


@dataclass(frozen=True)
class Probe:
    """A command that must succeed over SSH on every terminal once it is up."""

    name: str
    run: str
    expect: str | None  # a text its output must contain


class FaultKind(StrEnum):
    NFS_RESTART = "nfs-restart"  # the lab's NFS server stopped, and started again
    NFS_PAUSE = "nfs-pause"  # the server frozen (SIGSTOP), then let go on (SIGCONT)
    DHCP_RESTART = "dhcp-restart"  # the lab network's DHCP server stopped, and started again
    PACKET_LOSS = "packet-loss"  # a share of the NFS server's packets dropped
    LATENCY = "latency"  # every terminal's packets held back

    @property
    def away(self) -> bool:
        """A server away for down_for s (else: a network impaired for during s)."""
        return self in (FaultKind.NFS_RESTART, FaultKind.NFS_PAUSE, FaultKind.DHCP_RESTART)


class FaultAfter(StrEnum):
    OK = "ok"  # once every terminal's verdict is in
    NFS_MOUNTED = "nfs-mounted"  # once every terminal's console showed its NFS root mounted


@dataclass(frozen=True)
class Fault:
    """Something that goes wrong in the lab once every terminal's verdict is in; the
    terminals must carry on (verbs/faults.py)."""

    kind: FaultKind
    after: FaultAfter  # when: during the boot (nfs-mounted) or after it (ok)
    delay: int  # seconds after that (and after the previous fault of the same after)
    down_for: int  # seconds a server is away (nfs-restart, nfs-pause, dhcp-restart)
    during: int  # seconds the network is impaired (packet-loss, latency)
    loss: int  # percent of the NFS server's packets dropped (packet-loss)
    latency: int  # milliseconds, at most, each terminal's packets are held (latency)
    resume_within: int  # seconds a terminal's root has to answer again after the fault

    @property
    def lasts(self) -> int:
        return self.down_for if self.kind.away else self.during

    def describe(self) -> str:
        return {
            FaultKind.NFS_RESTART: f"the NFS server stopped for {self.down_for} s",
            FaultKind.NFS_PAUSE: f"the NFS server frozen for {self.down_for} s",
            FaultKind.DHCP_RESTART: f"the DHCP server stopped for {self.down_for} s",
            FaultKind.PACKET_LOSS: f"{self.loss}% of the NFS server's packets lost for "
                                   f"{self.during} s",
            FaultKind.LATENCY: f"packets held up to {self.latency} ms for {self.during} s",
        }[self.kind]


@dataclass(frozen=True)
class Scenario:
    """A lab as the user wrote it: only user configuration, nothing derived."""

    path: Path
    lab: Lab
    root: Root
    kernel: Kernel
    initrd: Initrd
    terminals: tuple[Terminal, ...]
    pxe: Pxe
    probes: tuple[Probe, ...] = ()
    nodes: tuple[Node, ...] = ()
    faults: tuple[Fault, ...] = ()

    @property
    def arch(self) -> Arch:
        """The architecture of the scenario's root, kernel and initrd: its terminals' and
        machines' (read.py refuses a scenario that mixes them)."""
        arches = [*(t.arch for t in self.terminals), *(m.arch for m in self.pxe.machines)]
        return arches[0] if arches else Arch.AMD64

    @property
    def xen_on_nodes(self) -> bool:
        """A Xen lab whose terminals all run on its Xen [[node]]s: its lab host runs QEMU
        and serves them their network and root."""
        return self.lab.hypervisor is Hypervisor.XEN and bool(self.nodes)
