"""The plan: every name, MAC, IP, path and kernel command line of a lab, resolved once.

Pure and deterministic: the same scenario and directories give the same plan, byte for byte.
Everything after this step only renders the plan or acts on it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from vlab.errors import ScenarioError
from vlab.scenario import (
    LOCAL,
    MAC_PREFIX,
    AfterBoot,
    HostMode,
    Hypervisor,
    InitrdBuilder,
    KernelSource,
    Lab,
    NfsVersion,
    NicDriver,
    RootSource,
    RootVia,
    Scenario,
    Writable,
)

KVM_MAC_PREFIX = MAC_PREFIX[Hypervisor.QEMU]
FIRST_TERMINAL_HOST = 10
NFS_PORT_BASE = 20490
MOUNT_PORT_OFFSET = 1000  # NFSv3's MOUNT protocol listens this far above the NFS port
NETNS = "vlab-host"
MARKER = "VLAB-NFSROOT-OK"
# Words vlab adds for speed, not for function: a quiet serial console boots faster under TCG.
TUNING_ARGS = ("quiet",)
FAIL_MARKER = "VLAB-FAIL"
READY_MARKER = "VLAB-TERMINAL-UP"
SSH_MARKER = "VLAB-SSH-HOSTKEY"  # then the terminal's name and its SSH host key


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
    ip: str
    memory_mib: int
    vcpus: int
    root_server: str
    root_path: str
    dhcp_root_path: str | None
    cmdline: str
    console_log: Path
    boot: str = "kernel"  # "kernel": direct kernel boot; "pxe": the NIC's PXE ROM
    host: str = LOCAL  # the hypervisor host it runs on


@dataclass(frozen=True)
class HostPlan:
    """A hypervisor host of the lab: the lab's own (local), or one of its [[libvirt_host]]s."""

    name: str
    uri: str
    netns: str | None  # vlab reaches a remote host from inside this namespace
    network: str  # the libvirt network its terminals join (or "")
    bridge: str  # ...or the bridge (or "")
    kernel_path: Path  # the boot files as that host's QEMU reads them
    initrd_path: Path
    files_dir: Path  # remote: the lab's folder of shipped files there

    @property
    def remote(self) -> bool:
        return self.name != LOCAL


@dataclass(frozen=True)
class LabPlan:
    lab: str
    scenario: Path
    uri: str
    host_mode: HostMode
    hypervisor: Hypervisor
    domain_type: str
    netns: str
    network: str
    bridge: str
    attempt: int  # > 0 when subnet, NFS port or bridge had to dodge another lab's
    subnet: ipaddress.IPv4Network
    gateway: str
    dhcp_start: str
    dhcp_end: str
    nfs_version: NfsVersion
    nfs_port: int
    mount_port: int
    nfs_options: str
    export_path: Path
    lab_dir: Path
    kernel_path: Path
    initrd_path: Path
    nfs_server_dir: Path
    tftp_root: Path  # only for terminals with boot = "pxe"
    root_source: RootSource
    root_image: Path | None
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
    hosts: tuple[HostPlan, ...]  # the local host first
    nfs_clients: tuple[ipaddress.IPv4Network, ...]  # the subnets its NFS server admits
    # The lab's SSH public key (base64 of an ssh-ed25519 blob), given to the terminals on
    # their command line; made by sshkeys.py when the lab is built, empty in a pure plan.
    ssh_key: str = ""

    def terminal(self, name: str) -> TerminalPlan | None:
        return next((t for t in self.terminals if t.name == name), None)

    def host(self, name: str) -> HostPlan:
        return next(h for h in self.hosts if h.name == name)

    def on(self, host: HostPlan) -> tuple[TerminalPlan, ...]:
        return tuple(t for t in self.terminals if t.host == host.name)


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


def pinned_mac(lab: str, terminal: str, attempt: int = 0, prefix: str = KVM_MAC_PREFIX) -> str:
    """A MAC in QEMU's 52:54:00 range (or Xen's 00:16:3e), from lab and terminal name only."""
    d = _digest("mac", lab, terminal, str(attempt))
    return prefix + "".join(f":{b:02x}" for b in d[:3])


def lab_subnet(lab: str, attempt: int = 0) -> ipaddress.IPv4Network:
    """A private /24 derived from the lab name, inside the lab host's own namespace."""
    octet = 1 + _digest("subnet", lab, *_again(attempt))[0] % 250
    return ipaddress.IPv4Network(f"10.213.{octet}.0/24")


def _again(attempt: int) -> tuple[str, ...]:
    return (str(attempt),) if attempt else ()


@dataclass(frozen=True)
class Taken:
    """What the other labs on this machine hold: a new lab's plan steers clear of it."""

    subnets: frozenset[str] = frozenset()
    ports: frozenset[int] = frozenset()
    bridges: frozenset[str] = frozenset()
    macs: frozenset[str] = frozenset()
    by: dict[str, str] = field(default_factory=dict, compare=False)  # resource -> lab

    def holds(self, subnet: str, nfs_port: int, bridge: str) -> bool:
        return (subnet in self.subnets or bridge in self.bridges
                or bool({nfs_port, nfs_port + MOUNT_PORT_OFFSET} & self.ports))


MAX_ATTEMPTS = 200


Lease = tuple[int, ipaddress.IPv4Network, int, str]  # attempt, subnet, NFS port, bridge


def _lease(lab: Lab, path: Path, taken: Taken, attempt: int | None) -> Lease:
    """The lab's subnet, NFS port and bridge: from its name, re-derived past other labs'."""
    def derive(n: int) -> tuple[ipaddress.IPv4Network, int, str]:
        port = NFS_PORT_BASE + int.from_bytes(_digest("port", lab.name, *_again(n))[:2]) % 1000
        bridge = "vlab" + _digest("bridge", lab.name, *_again(n)).hex()[:8]
        return lab.subnet or lab_subnet(lab.name, n), port, bridge

    if attempt is not None:  # recorded when the lab came up: keep it while it lives
        return (attempt, *derive(attempt))
    if lab.subnet is not None and str(lab.subnet) in taken.subnets:
        raise ScenarioError(path, "lab.subnet", f"'{lab.subnet}' is the subnet of lab "
                            f"{taken.by.get(str(lab.subnet), '?')!r}, which is up",
                            "choose another subnet, or leave subnet out to get a free one")
    for n in range(MAX_ATTEMPTS):
        subnet, port, bridge = derive(n)
        if not taken.holds(str(subnet), port, bridge):
            return n, subnet, port, bridge
    raise ScenarioError(path, "lab.name", f"{lab.name!r}: no free subnet and NFS port "
                        f"after {MAX_ATTEMPTS} tries ({len(taken.subnets)} labs are up)",
                        "take some labs down (vlab down) first")


Placement = dict[str, str]  # terminal -> host


def place(scenario: Scenario, free_mib: dict[str, int] | None = None) -> Placement:
    """Which host each terminal runs on: where the scenario says, else the host with the most
    free memory (as its libvirt reports it, less what this lab already put there), never over
    a host's capacity. Without free-memory figures (render, status) every host counts equal."""
    hosts = [LOCAL, *(h.name for h in scenario.libvirt_hosts)]
    capacity = {h.name: h.capacity for h in scenario.libvirt_hosts}
    free = {h: (free_mib or {}).get(h, 0) for h in hosts}
    count = dict.fromkeys(hosts, 0)
    placement: Placement = {}
    for t in scenario.terminals:
        if t.host is not None:
            placement[t.name] = t.host
            free[t.host] -= t.memory
            count[t.host] += 1
    for t in scenario.terminals:
        if t.host is not None:
            continue
        room = [h for h in hosts if capacity.get(h) is None or count[h] < (capacity[h] or 0)]
        best = max(room, key=lambda h: (free[h], -hosts.index(h)))
        placement[t.name] = best
        free[best] -= t.memory
        count[best] += 1
    return placement


def make_plan(scenario: Scenario, dirs: Dirs, taken: Taken = Taken(),
              attempt: int | None = None, placement: Placement | None = None) -> LabPlan:
    lab = scenario.lab
    attempt, subnet, nfs_port, bridge = _lease(lab, scenario.path, taken, attempt)
    hosts = list(subnet.hosts())
    gateway = str(hosts[0])
    if len(scenario.terminals) > len(hosts) - FIRST_TERMINAL_HOST:
        raise ScenarioError(scenario.path, "terminal", f"{len(scenario.terminals)} terminals "
                            f"do not fit in {subnet}", "use fewer terminals")
    lab_dir = dirs.state / "labs" / lab.name
    root = scenario.root
    builder = scenario.initrd.builder
    packages = debian_packages(root.packages, builder)
    export_path = {
        RootSource.BUSYBOX: dirs.cache / "roots" / "busybox",
        RootSource.DIR: root.path,
        # While the lab runs, the image stays mounted read-only here, and this is exported.
        RootSource.IMAGE: lab_dir / "root",
        RootSource.DEBIAN: dirs.cache / "roots" / (
            f"debian-{root.suite}-" + _digest("debian", root.suite, *packages).hex()[:12]),
    }[root.source]
    assert export_path is not None
    mount_port = nfs_port + MOUNT_PORT_OFFSET
    nfs_options = f"vers={lab.nfs_version.value},port={nfs_port}"
    if lab.nfs_version is NfsVersion.V3:
        # Every port given, so the terminal never needs to ask rpcbind.
        nfs_options += f",mountport={mount_port},mountproto=tcp,nolock"
    macs = _macs(scenario, taken.macs)
    placement = placement or place(scenario)
    servers = {h.name: str(h.nfs_server) for h in scenario.libvirt_hosts}
    terminals = []
    for i, t in enumerate(scenario.terminals):
        on = placement.get(t.name, LOCAL)
        server, path = root_target(t.root, servers.get(on, gateway), str(export_path))
        dhcp_root = None
        if lab.root_via is RootVia.DHCP:
            dhcp_root = t.dhcp_root_path or dhcp_root_path(builder, lab.nfs_version, server,
                                                           path, nfs_options)
        given = lab.root_via is RootVia.CMDLINE or t.root is not None
        words = kernel_cmdline(scenario, server if given else None, path, nfs_options,
                               [CONSOLE[lab.hypervisor]], t.cmdline, macs[t.name])
        terminals.append(TerminalPlan(
            name=t.name,
            domain=f"vlab-{lab.name}-{t.name}",
            nic_model=NIC_MODELS[t.nic],
            mac=macs[t.name],
            # Another host's terminals take an address from its network's DHCP.
            ip=str(hosts[FIRST_TERMINAL_HOST - 1 + i]) if on == LOCAL else "",
            memory_mib=t.memory,
            vcpus=t.vcpus,
            root_server=server,
            root_path=path,
            dhcp_root_path=dhcp_root,
            cmdline=words,
            console_log=lab_dir / "console" / f"{t.name}.log",
            boot=t.boot.value,
            host=on,
        ))
    kernel_path, initrd_path = lab_dir / "boot" / "vmlinuz", lab_dir / "boot" / "initrd.img"
    host_plans = [HostPlan(name=LOCAL, uri=lab.uri, netns=None, network=f"vlab-{lab.name}",
                           bridge="", kernel_path=kernel_path, initrd_path=initrd_path,
                           files_dir=kernel_path.parent)]
    for h in scenario.libvirt_hosts:
        files = Path(h.files) / lab.name
        host_plans.append(HostPlan(
            name=h.name, uri=h.uri, netns=h.netns, network=h.network or "",
            bridge=h.bridge or "", kernel_path=files / "vmlinuz",
            initrd_path=files / "initrd.img", files_dir=files))
    return LabPlan(
        lab=lab.name,
        scenario=scenario.path,
        uri=lab.uri,
        # vlab's isolated lab host runs QEMU only: a Xen lab needs the Xen host's libvirtd.
        host_mode=HostMode.SYSTEM if lab.hypervisor is Hypervisor.XEN else lab.host,
        hypervisor=lab.hypervisor,
        domain_type={Hypervisor.KVM: "kvm", Hypervisor.QEMU: "qemu",
                     Hypervisor.XEN: "xen"}[lab.hypervisor],
        netns=NETNS,
        network=f"vlab-{lab.name}",
        bridge=bridge,
        attempt=attempt,
        subnet=subnet,
        gateway=gateway,
        dhcp_start=str(hosts[FIRST_TERMINAL_HOST - 1]),
        dhcp_end=str(hosts[-1]),
        nfs_version=lab.nfs_version,
        nfs_port=nfs_port,
        mount_port=mount_port,
        nfs_options=nfs_options,
        export_path=export_path,
        lab_dir=lab_dir,
        kernel_path=kernel_path,
        initrd_path=initrd_path,
        nfs_server_dir=lab_dir / "nfs",
        tftp_root=lab_dir / "tftp",
        root_source=root.source,
        root_image=root.path if root.source is RootSource.IMAGE else None,
        debian_suite=root.suite,
        debian_packages=packages,
        kernel_source=scenario.kernel.source,
        kernel_package=scenario.kernel.package,
        kernel_version=scenario.kernel.version,
        builder=builder,
        nic_drivers=scenario.initrd.nic_drivers,
        writable=scenario.root.writable,
        after_boot=scenario.root.after_boot,
        timeout=lab.timeout,
        stall=lab.stall,
        terminals=tuple(terminals),
        hosts=tuple(host_plans),
        nfs_clients=(subnet, *sorted({h.clients for h in scenario.libvirt_hosts if h.clients},
                                     key=str)),
    )


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



def root_args(builder: InitrdBuilder, version: NfsVersion, server: str | None, path: str,
              options: str) -> list[str]:
    """The kernel command line words that tell each initrd where its NFS root is; with no
    server, the initrd takes the root path from DHCP (option 17)."""
    if server is None:
        return {
            InitrdBuilder.INITRAMFS_TOOLS: ["root=/dev/nfs", "ip=dhcp"],
            InitrdBuilder.DRACUT: ["root=dhcp", "ip=dhcp", "rd.neednet=1"],
            InitrdBuilder.VLAB: [],
        }[builder]
    if builder is InitrdBuilder.INITRAMFS_TOOLS:
        # klibc's nfsmount asks rpcbind for the ports and takes no mountport.
        return ["root=/dev/nfs", f"nfsroot={server}:{path},tcp,nfsvers=3", "ip=dhcp"]
    if builder is InitrdBuilder.DRACUT:
        scheme = "nfs" if version is NfsVersion.V3 else "nfs4"
        return [f"root={scheme}:{server}:{path}:{options}", "ip=dhcp", "rd.neednet=1"]
    return [f"root={server}:{path}", f"rootflags={options}"]


def root_target(override: str | None, server: str, export: str) -> tuple[str, str]:
    """Server and path a terminal mounts: the page's root=[SERVER:]/path override, if any."""
    if not override:
        return server, export
    o_server, _, path = override.rpartition(":")
    return o_server or server, path


def nfs_client_id(mac: str) -> str:
    """The NFSv4 client id a terminal gives its server, from its MAC.

    Without one the kernel names itself to the server by host name alone, and terminals whose
    DHCP answer names no host are all "(none)": the server takes them for one client that keeps
    rebooting, and one of them loses its mount (EIO)."""
    return "vlab-" + mac.replace(":", "")


def kernel_cmdline(scenario: Scenario, server: str | None, path: str, nfs_options: str,
                   consoles: list[str], extra: str, mac: str | None) -> str:
    """The whole kernel command line of a terminal (or of a PXE host; mac None: any host)."""
    root = scenario.root
    words = [*consoles, "selinux=0",
             *root_args(scenario.initrd.builder, scenario.lab.nfs_version, server, path,
                        nfs_options)]
    if mac:
        # kmod's modprobe (dracut, initramfs-tools) passes it to nfs.ko; vlab's initrd reads it.
        words.append(f"nfs.nfs4_unique_id={nfs_client_id(mac)}")
    words.append(f"vlab.writable={root.writable.value}")
    if root.source is RootSource.BUSYBOX:
        words.append(f"vlab.after={root.after_boot.value}")
    else:
        words.append("systemd.show_status=1")  # its "Reached target" line is the ready line
    words += TUNING_ARGS
    if extra:
        words.append(extra)
    return " ".join(words)


def dhcp_root_path(builder: InitrdBuilder, version: NfsVersion, server: str, path: str,
                   options: str) -> str:
    """Option 17 as each initrd reads it (klibc's nfsmount asks rpcbind, so no options)."""
    if builder is InitrdBuilder.INITRAMFS_TOOLS:
        return f"{server}:{path}"
    scheme = "nfs" if version is NfsVersion.V3 else "nfs4"
    return f"{scheme}:{server}:{path}:{options}"


def _macs(scenario: Scenario, others: frozenset[str] = frozenset()) -> dict[str, str]:
    """Given MACs win; the others are pinned, re-derived on a collision inside the lab or
    with another lab's."""
    taken = {t.mac for t in scenario.terminals if t.mac} | others
    macs: dict[str, str] = {}
    for t in scenario.terminals:
        if t.mac:
            macs[t.name] = t.mac
            continue
        attempt = 0
        prefix = MAC_PREFIX[scenario.lab.hypervisor]
        while (mac := pinned_mac(scenario.lab.name, t.name, attempt, prefix)) in taken:
            attempt += 1
        taken.add(mac)
        macs[t.name] = mac
    return macs
