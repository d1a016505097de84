"""The plan: every name, MAC, IP, path and kernel command line of a lab, resolved once.

Pure and deterministic: the same scenario and directories give the same plan, byte for byte.
Everything after this step only renders the plan or acts on it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vlab.cmdline import (
    MOUNT_PORT_OFFSET,
    kernel_cmdline,
    nfs_options,
    root_path_by_dhcp,
    root_target,
)
from vlab.errors import ScenarioError
from vlab.lease import NO_OTHER_LABS, Taken, digest, lease, pinned_mac, pinned_macs
from vlab.scenario.model import (
    EXPORT_PATH_RE,
    LAB_HOST,
    LOCAL,
    NFS_HOST,
    UEFI_PXE_MEMORY,
    AfterBoot,
    Boot,
    Firmware,
    Hypervisor,
    InitrdBuilder,
    KernelSource,
    LabHostMode,
    NfsVersion,
    NicDriver,
    RootSource,
    RootVia,
    Scenario,
    Writable,
)
from vlab.site import Booter, MachinePlan, Site, site

FIRST_TERMINAL_HOST = 10
NETNS = "vlab-host"
# A lab's NFS server has a network namespace of its own, joined to the lab bridge, at the lab
# network's .2 (the lab host is .1, DHCP and TFTP; terminals from .10): there it listens where
# a site's server does, so root paths and mount options are a site's. (Not for labs with
# [[libvirt_host]]s: their terminals reach the server through the lab host's namespace.)
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


@dataclass(frozen=True)
class NodePlan:
    """A node of the lab: the lab host itself (LOCAL), or one of its [[libvirt_host]]s."""

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

    lab: str
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
    writable: Writable
    after_boot: AfterBoot
    timeout: int
    stall: int
    terminals: tuple[TerminalPlan, ...]
    nodes: tuple[NodePlan, ...]  # the lab host first
    nfs_clients: tuple[ipaddress.IPv4Network, ...]  # the subnets its NFS server admits
    # The lab's SSH public key (base64 of an ssh-ed25519 blob), on the terminals' command
    # lines; made by sshkeys.py when the lab is built, empty in a pure plan.
    ssh_key: str = ""
    # Twins of a site with its own NFS server ([pxe] nfs_server): the files they boot name
    # that address, and in the lab vlab's server answers at it (and is their router).
    stand_in: str | None = None
    # The PXE trees: `vlab pxe`'s, of the scenario's [[host]]s; the lab's own, of its
    # boot = "pxe" terminals (in tftp_root). None: no such machine.
    site: Site | None = None
    tftp_tree: Site | None = None

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
        """The lab network's IPv6 /64 (a PXE lab's: iPXE waits for a router advertisement);
        the lab host is its ::1."""
        return f"fd00:213:{self.subnet.network_address.packed[2]:x}::/64"

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
    def tftp_root(self) -> Path:  # only for terminals with boot = "pxe"
        return self.lab_dir / "tftp"

    @property
    def busy_nodes(self) -> tuple[NodePlan, ...]:
        """The lab host, and every other node that runs one of the lab's terminals."""
        return tuple(h for h in self.nodes if not h.remote or self.on(h))

    def terminal(self, name: str) -> TerminalPlan | None:
        return next((t for t in self.terminals if t.name == name), None)

    def node(self, name: str) -> NodePlan:
        return next(h for h in self.nodes if h.name == name)

    def on(self, node: NodePlan) -> tuple[TerminalPlan, ...]:
        return tuple(t for t in self.terminals if t.node == node.name)


Placement = dict[str, str]  # terminal -> host


def place(scenario: Scenario, free_mib: dict[str, int] | None = None) -> Placement:
    """Which host each terminal runs on: where the scenario says (the lab host for one that
    boots PXE or UEFI), else the host with the most
    free memory (as its libvirt reports it, less what this lab already put there), never over
    a host's capacity. Without free-memory figures (render, status) every host counts equal."""
    hosts = [LOCAL, *(h.name for h in scenario.nodes)]
    capacity = {h.name: h.capacity for h in scenario.nodes}
    free = {h: (free_mib or {}).get(h, 0) for h in hosts}
    count = dict.fromkeys(hosts, 0)
    placement: Placement = {}
    for t in scenario.terminals:
        if (on := t.node or (None if t.anywhere else LOCAL)) is not None:
            placement[t.name] = on
            free[on] -= t.memory
            count[on] += 1
    for t in scenario.terminals:
        if t.name in placement:
            continue
        room = [h for h in hosts if capacity.get(h) is None or count[h] < (capacity[h] or 0)]
        best = max(room, key=lambda h: (free[h], -hosts.index(h)))
        placement[t.name] = best
        free[best] -= t.memory
        count[best] += 1
    return placement


def root_squash(source: RootSource) -> bool:
    return source is RootSource.BUSYBOX


def nfs_address(subnet: ipaddress.IPv4Network, nfs_netns: str | None) -> str:
    """Where terminals mount the root: the server's own namespace (.2), or the lab host."""
    return str(subnet.network_address + (LAB_HOST if nfs_netns is None else NFS_HOST))


def domain_name(lab: str, terminal: str) -> str:
    return f"vlab-{lab}-{terminal}"


def make_plan(scenario: Scenario, dirs: Dirs, taken: Taken = NO_OTHER_LABS,
              attempt: int | None = None, placement: Placement | None = None, *,
              ssh_key: str = "", timeout: int | None = None, twins: bool = False) -> LabPlan:
    """The lab's plan. `ssh_key` goes on every command line; `timeout` overrides [lab]
    timeout; with `twins`, the terminals are virtual twins of the [[host]] machines."""
    lab = scenario.lab
    attempt, subnet, nfs_port, bridge = lease(lab, scenario.path, taken, attempt)
    if len(scenario.terminals) > subnet.num_addresses - 2 - FIRST_TERMINAL_HOST:
        raise ScenarioError(scenario.path, "terminal", f"{len(scenario.terminals)} terminals "
                            f"do not fit in {subnet}", "use fewer terminals")
    lab_dir = dirs.state / "labs" / lab.name
    root = scenario.root
    packages = debian_packages(root.packages, scenario.initrd.builder)
    export_path = _export_path(scenario, dirs, lab_dir, packages)
    _check_export_path(scenario, export_path)
    nfs_netns = None if scenario.nodes else NFS_NETNS_PREFIX + lab.name
    server = nfs_address(subnet, nfs_netns)
    if nfs_netns:
        nfs_port = NFS_PORT
    option_port = None if nfs_netns else nfs_port
    nodes = _nodes(scenario, lab_dir)
    squash = root_squash(root.source)

    def tree(booters: tuple[Booter, ...], key: str = "") -> Site | None:
        return site(scenario, booters, server, option_port, str(export_path), str(subnet),
                    squash, ssh_key=key) if booters else None

    hosts = tree(tuple(Booter(f"host[{i}]", m.name, m.mac, m.ip, m.root, m.cmdline, m.firmware)
                       for i, m in enumerate(scenario.pxe.machines)))
    tftp_tree = None
    if twins:
        terminals = _twins(scenario, hosts, subnet, lab_dir)
    else:
        macs = pinned_macs(scenario, taken.macs)
        tftp_tree = tree(tuple(
            Booter(f"terminal[{i}]", t.name, macs[t.name], _terminal_ip(subnet, i), t.root,
                   t.cmdline, t.firmware)
            for i, t in enumerate(scenario.terminals) if t.boot is Boot.PXE), ssh_key)
        terminals = _terminals(scenario, subnet, server, option_port, export_path, lab_dir,
                               placement or place(scenario), macs, ssh_key, tftp_tree)
    _own_domains(scenario, terminals, taken, twins)
    return LabPlan(
        lab=lab.name,
        scenario=scenario.path,
        uri=lab.uri,
        # vlab's isolated lab host runs QEMU only: a Xen lab needs the Xen host's libvirtd.
        lab_host=LabHostMode.SYSTEM if lab.hypervisor is Hypervisor.XEN else lab.lab_host,
        hypervisor=lab.hypervisor,
        bridge=bridge,
        attempt=attempt,
        subnet=subnet,
        nfs_version=lab.nfs_version,
        nfs_port=nfs_port,
        nfs_netns=nfs_netns,
        export_path=export_path,
        lab_dir=lab_dir,
        root_source=root.source,
        root_image=root.path if root.source is RootSource.IMAGE else None,
        root_partition=root.partition,
        boot_partition=root.boot_partition,
        debian_suite=root.suite,
        debian_packages=packages,
        kernel_source=scenario.kernel.source,
        kernel_package=scenario.kernel.package,
        kernel_version=scenario.kernel.version,
        builder=scenario.initrd.builder,
        nic_drivers=scenario.initrd.nic_drivers,
        writable=scenario.root.writable,
        after_boot=scenario.root.after_boot,
        timeout=lab.timeout if timeout is None else timeout,
        stall=lab.stall,
        terminals=terminals,
        nodes=nodes,
        nfs_clients=(subnet, *sorted({h.clients for h in scenario.nodes if h.clients},
                                     key=str)),
        ssh_key=ssh_key,
        stand_in=(str(scenario.pxe.nfs_server) if twins and nfs_netns
                  and scenario.pxe.nfs_server else None),
        site=hosts,
        tftp_tree=tftp_tree,
    )


def _export_path(scenario: Scenario, dirs: Dirs, lab_dir: Path,
                 packages: tuple[str, ...]) -> Path:
    root = scenario.root
    if root.source is RootSource.BUSYBOX:
        return dirs.cache / "roots" / "busybox"
    if root.source is RootSource.IMAGE:
        # While the lab runs, the image stays mounted read-only here, and this is exported.
        return lab_dir / "root"
    if root.source is RootSource.DEBIAN:
        return dirs.cache / "roots" / (
            f"debian-{root.suite}-" + digest("debian", root.suite, *packages).hex()[:12])
    assert root.path is not None
    for folder in (dirs.state, dirs.cache):
        # vlab's own state (lab keys, records) or the whole cache is no root to export.
        if root.path == folder or folder.is_relative_to(root.path) or (
                folder == dirs.state and root.path.is_relative_to(folder)):
            raise ScenarioError(scenario.path, "root.path", f"{str(root.path)!r} holds vlab's "
                                f"own {'state' if folder == dirs.state else 'cache'} "
                                f"({folder})", "give a folder that holds only the root tree")
    return root.path


def _check_export_path(scenario: Scenario, path: Path) -> None:
    """The export path goes unquoted into ganesha.conf, exports and root=: plain characters."""
    if not EXPORT_PATH_RE.fullmatch(str(path)):
        key = "root.path" if scenario.root.path is not None else ""
        raise ScenarioError(scenario.path, key, f"the export path {str(path)!r} has a character "
                            "that ganesha.conf, /etc/exports or root= cannot carry",
                            "use a path of letters, digits and . _ - + @ , / only (move the "
                            "root, or set VLAB_STATE_DIR/VLAB_CACHE_DIR to such a path)")


def _nodes(scenario: Scenario, lab_dir: Path) -> tuple[NodePlan, ...]:
    lab = scenario.lab
    local = NodePlan(name=LOCAL, uri=lab.uri, netns=None, network=f"vlab-{lab.name}",
                     bridge="", files_dir=lab_dir / "boot")
    return (local, *(NodePlan(name=h.name, uri=h.uri, netns=h.netns, network=h.network or "",
                              bridge=h.bridge or "", files_dir=Path(h.files) / lab.name)
                     for h in scenario.nodes))


def _terminal_ip(subnet: ipaddress.IPv4Network, i: int) -> ipaddress.IPv4Address:
    """The address the lab's DHCP pins for its i-th terminal."""
    return subnet.network_address + FIRST_TERMINAL_HOST + i


def _terminals(scenario: Scenario, subnet: ipaddress.IPv4Network, nfs_server: str,
               option_port: int | None, export_path: Path, lab_dir: Path, placement: Placement,
               macs: dict[str, str], ssh_key: str, tftp_tree: Site | None
               ) -> tuple[TerminalPlan, ...]:
    """Each terminal's plan; a PXE terminal boots with its APPEND line's command line."""
    lab = scenario.lab
    options = nfs_options(lab.nfs_version, option_port)
    by_pxe = {m.name: m.cmdline for m in tftp_tree.machines} if tftp_tree else {}
    servers = {h.name: str(h.nfs_server) for h in scenario.nodes}
    terminals = []
    for i, t in enumerate(scenario.terminals):
        on = placement.get(t.name, LOCAL)
        server, path = root_target(t.root, servers.get(on, nfs_server), str(export_path))
        dhcp_root = None
        if lab.root_via is RootVia.DHCP:
            dhcp_root = t.dhcp_root_path or root_path_by_dhcp(scenario, None, server, path,
                                                              options)
        given = lab.root_via is RootVia.CMDLINE or t.root is not None
        words = by_pxe.get(t.name) or kernel_cmdline(
            scenario, server if given else None, path, options, [CONSOLE[lab.hypervisor]],
            t.cmdline, macs[t.name], ssh_key)
        if len(words.encode()) > MAX_CMDLINE_BYTES:
            raise ScenarioError(scenario.path, f"terminal[{i}].cmdline", "the kernel command "
                                f"line with vlab's words is over the {MAX_CMDLINE_BYTES} bytes "
                                "Linux keeps (it cuts the rest, vlab.sshkey= last)",
                                "shorten the cmdline words")
        terminals.append(TerminalPlan(
            name=t.name,
            domain=domain_name(lab.name, t.name),
            nic_model=NIC_MODELS[t.nic],
            mac=macs[t.name],
            # Another node's terminals take an address from its network's DHCP.
            ip=str(_terminal_ip(subnet, i)) if on == LOCAL else "",
            memory_mib=t.memory,
            vcpus=t.vcpus,
            dhcp_root_path=dhcp_root,
            cmdline=words,
            console_log=lab_dir / "console" / f"{t.name}.log",
            boot=t.boot.value,
            node=on,
            firmware=t.firmware,
            nvram=None if t.firmware is Firmware.BIOS else lab_dir / "nvram" / f"{t.name}.fd",
        ))
    return tuple(terminals)


def _own_domains(scenario: Scenario, terminals: tuple[TerminalPlan, ...], taken: Taken,
                 twins: bool) -> None:
    """No terminal's libvirt domain may be another lab's: `vlab-{lab}-{terminal}` of lab
    "a-b" and terminal "c" is that of lab "a" and terminal "b-c"."""
    for i, t in enumerate(terminals):
        if t.domain in taken.domains:
            raise ScenarioError(
                scenario.path, "lab.name" if twins else f"terminal[{i}].name",
                f"{t.name!r} of lab {scenario.lab.name!r} is the libvirt domain {t.domain}, "
                f"which lab {taken.by.get(t.domain, '?')!r} has (it is up)",
                "rename the terminal or the lab")


def _twins(scenario: Scenario, hosts: Site | None, subnet: ipaddress.IPv4Network,
           lab_dir: Path) -> tuple[TerminalPlan, ...]:
    """A virtual twin per physical machine (a sample when there are many): its MAC, its fixed
    IP, its command line, booting from the network; and one more per firmware whose MAC has
    no file, which must boot through the default config."""
    lab = scenario.lab.name
    machines = hosts.machines if hosts else ()
    macs = {m.mac for m in machines}
    twins = [(m.name, m.mac, m.ip if m.ip and ipaddress.IPv4Address(m.ip) in subnet else None,
              m.root_path, m.firmware, m.cmdline) for m in _sample(machines)]
    for firmware in (hosts.firmwares if hosts else ()) or (scenario.pxe.firmware,):
        name = "default" if firmware is Firmware.BIOS else f"default-{firmware.value}"
        mac = next(m for n in range(99) if (m := pinned_mac(lab, f"pxe-{name}", n)) not in macs)
        macs.add(mac)
        twins.append((name, mac, None, None, firmware, hosts.default_cmdline if hosts else ""))
    return tuple(TerminalPlan(
        name=f"pxe-{name}", domain=domain_name(lab, f"pxe-{name}"), nic_model="virtio",
        mac=mac, ip=ip or "", memory_mib=256 if firmware is Firmware.BIOS else UEFI_PXE_MEMORY,
        vcpus=1, dhcp_root_path=root_path, cmdline=cmdline,
        console_log=lab_dir / "console" / f"pxe-{name}.log", boot="pxe", firmware=firmware,
        nvram=None if firmware is Firmware.BIOS else lab_dir / "nvram" / f"pxe-{name}.fd",
    ) for name, mac, ip, root_path, firmware, cmdline in twins)


def _sample(machines: tuple[MachinePlan, ...]) -> tuple[MachinePlan, ...]:
    """The machines that get a twin: the first TWIN_SAMPLE, and the first of each firmware
    the sample would miss (every firmware of the site is booted at least once)."""
    picked = list(machines[:TWIN_SAMPLE])
    for firmware in Firmware:
        if not any(m.firmware is firmware for m in picked):
            picked += [m for m in machines if m.firmware is firmware][:1]
    return tuple(picked)


# What a bootstrapped Debian terminal needs, and what each initrd builder needs in it
# (HOST-NOTES: dracut wants network-legacy's tools, procps and netbase, or mount.nfs fails).
DEBIAN_BASE = ("systemd-sysv", "udev", "linux-image-amd64", "procps", "netbase", "iproute2",
               "openssh-server")
BUILDER_PACKAGES = {
    InitrdBuilder.VLAB: (),
    InitrdBuilder.INITRAMFS_TOOLS: ("initramfs-tools",),
    InitrdBuilder.DRACUT: ("dracut", "dracut-network", "nfs-common", "isc-dhcp-client",
                           "iputils-arping"),
}


def debian_packages(extra: tuple[str, ...], builder: InitrdBuilder) -> tuple[str, ...]:
    return tuple(sorted({*DEBIAN_BASE, *BUILDER_PACKAGES[builder], *extra}))
