"""Making the plan: every name, MAC, IP, path and kernel command line of a lab, resolved once.

Pure and deterministic: the same scenario and directories give the same plan, byte for byte.
Everything after this step only renders the plan or acts on it.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from vlab.errors import ScenarioError
from vlab.plan.cmdline import (
    kernel_cmdline,
    nfs_options,
    root_path_by_dhcp,
    root_target,
)
from vlab.plan.lab import (
    ARM64_CONSOLE,
    CONSOLE,
    FIRST_TERMINAL_HOST,
    MAX_CMDLINE_BYTES,
    NFS_NETNS_PREFIX,
    NFS_PORT,
    NIC_MODELS,
    TWIN_SAMPLE,
    Dirs,
    LabPlan,
    NodePlan,
    TerminalPlan,
    domain_name,
    ipv6_subnet,
    nfs_address,
    root_squash,
    slaac_address,
)
from vlab.plan.lease import NO_OTHER_LABS, Taken, digest, lease, pinned_mac, pinned_macs
from vlab.plan.site import Booter, MachinePlan, Site, site
from vlab.scenario.model import (
    EXPORT_PATH_RE,
    LOCAL,
    NFS_HOST,
    UEFI_PXE_MEMORY,
    Addresses,
    Arch,
    Boot,
    Firmware,
    Hypervisor,
    InitrdBuilder,
    LabHostMode,
    Netboot,
    RootSource,
    RootVia,
    Scenario,
)

Placement = dict[str, str]  # terminal -> host


def place(scenario: Scenario, free_mib: dict[str, int] | None = None,
          kept: Placement | None = None) -> Placement:
    """Which host each terminal runs on: where a lab that is up already runs it (`kept`,
    its recorded placement), where the scenario says (the lab host for one that boots PXE
    or UEFI), else the host with the most
    free memory (as its libvirt reports it, less what this lab already put there), never over
    a host's capacity. Without free-memory figures (render, status) every host counts equal."""
    hosts = [*([] if scenario.xen_on_nodes else [LOCAL]), *(h.name for h in scenario.nodes)]
    capacity = {h.name: h.capacity for h in scenario.nodes}
    free = {h: (free_mib or {}).get(h, 0) for h in hosts}
    count = dict.fromkeys(hosts, 0)
    kept = {t: h for t, h in (kept or {}).items() if h in hosts}
    placement: Placement = {}
    for t in scenario.terminals:
        if (on := kept.get(t.name) or t.node or (None if t.anywhere else LOCAL)) is not None:
            placement[t.name] = on
            free[on] = free.get(on, 0) - t.memory
            count[on] = count.get(on, 0) + 1
    for t in scenario.terminals:
        if t.name in placement:
            continue
        room = [h for h in hosts if capacity.get(h) is None or count[h] < (capacity[h] or 0)]
        best = max(room, key=lambda h: (free[h], -hosts.index(h)))
        placement[t.name] = best
        free[best] -= t.memory
        count[best] += 1
    return placement


def make_plan(scenario: Scenario, dirs: Dirs, taken: Taken = NO_OTHER_LABS,
              attempt: int | None = None, placement: Placement | None = None, *,
              ssh_key: str = "", timeout: int | None = None, twins: bool = False) -> LabPlan:
    """The lab's plan. `ssh_key` goes on every command line; `timeout` overrides [lab]
    timeout; with `twins`, the terminals are virtual twins of the [[machine]] machines."""
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
    if lab.addresses is not Addresses.IPV4:  # the root over IPv6, as root= and mount write it
        server = f"[{ipv6_subnet(subnet).network_address + NFS_HOST}]"
    if nfs_netns:
        nfs_port = NFS_PORT
    option_port = None if nfs_netns else nfs_port
    nodes = _nodes(scenario, lab_dir)
    squash = root_squash(root.source)

    def tree(booters: tuple[Booter, ...], lab_key: str = "") -> Site | None:
        return site(scenario, booters, server, option_port, str(export_path), str(subnet),
                    squash, ssh_key=lab_key) if booters else None

    hosts = tree(tuple(Booter(f"machine[{i}]", m.name, m.mac, m.ip, m.export, m.cmdline,
                              m.firmware, m.netboot)
                       for i, m in enumerate(scenario.pxe.machines)))
    tftp_tree = None
    if twins:
        terminals = _twins(scenario, hosts, subnet, lab_dir)
    else:
        macs = pinned_macs(scenario, taken.macs)
        tftp_tree = tree(tuple(
            Booter(f"terminal[{i}]", t.name, macs[t.name], _terminal_ip(subnet, i), t.export,
                   t.cmdline, t.firmware)
            for i, t in enumerate(scenario.terminals) if t.boot is Boot.PXE), ssh_key)
        terminals = _terminals(scenario, subnet, server, option_port, export_path, lab_dir,
                               placement or place(scenario), macs, ssh_key, tftp_tree)
    _own_domains(scenario, terminals, taken, twins)
    return LabPlan(
        name=lab.name,
        scenario=scenario.path,
        uri=lab.uri,
        # vlab's isolated lab host runs QEMU only: a Xen lab without [[node]]s runs its
        # terminals on the Xen host's own libvirtd.
        lab_host=LabHostMode.SYSTEM if lab.hypervisor is Hypervisor.XEN
        and not scenario.xen_on_nodes else lab.lab_host,
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
        arch=scenario.arch,
        writable=scenario.root.writable,
        after_boot=scenario.root.after_boot,
        timeout=lab.timeout if timeout is None else timeout,
        stall=lab.stall,
        dhcp_lease=lab.dhcp_lease,
        terminals=terminals,
        nodes=nodes,
        nfs_clients=(subnet, *sorted({h.clients for h in scenario.nodes if h.clients},
                                     key=str)),
        ssh_key=ssh_key,
        stand_in=(str(scenario.pxe.nfs_server) if twins and nfs_netns
                  and scenario.pxe.nfs_server else None),
        site=hosts,
        tftp_tree=tftp_tree,
        addresses=lab.addresses,
    )


def _export_path(scenario: Scenario, dirs: Dirs, lab_dir: Path,
                 packages: tuple[str, ...]) -> Path:
    root = scenario.root
    if root.source is RootSource.BUSYBOX:
        arch = scenario.arch
        return dirs.cache / "roots" / ("busybox" if arch is Arch.AMD64 else f"busybox-{arch}")
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
        server, path = root_target(t.export, servers.get(on, nfs_server), str(export_path))
        dhcp_root = None
        if lab.root_via is RootVia.DHCP:
            dhcp_root = t.dhcp_root_path or root_path_by_dhcp(scenario, None, server, path,
                                                              options)
        given = lab.root_via is RootVia.CMDLINE or t.export is not None
        words = by_pxe.get(t.name) or kernel_cmdline(
            scenario, server if given else None, path, options,
            [ARM64_CONSOLE if t.arch is Arch.ARM64 else CONSOLE[lab.hypervisor]],
            t.cmdline, macs[t.name], ssh_key, t.name)
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
            # Another node's terminals take an address from its network's DHCP; an IPv6-only
            # lab's, none (SLAAC's, ip6).
            ip=str(_terminal_ip(subnet, i)) if on == LOCAL
            and lab.addresses is not Addresses.IPV6 else "",
            ip6=slaac_address(ipv6_subnet(subnet), macs[t.name])
            if lab.addresses is not Addresses.IPV4 else "",
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
    IP, its command line, booting from the network as it does; and one more per firmware of
    the TFTP-booting machines, whose MAC has no file, which must boot through the default
    config (a MAC the site does not know gets that config over TFTP)."""
    lab = scenario.lab.name
    machines = hosts.machines if hosts else ()
    macs = {m.mac for m in machines}
    twins = [(m.name, m.mac, m.ip if m.ip and ipaddress.IPv4Address(m.ip) in subnet else None,
              m.root_path, m.firmware, m.cmdline, m.netboot) for m in _sample(machines)]
    tftp = hosts.by(Netboot.TFTP) if hosts else ()
    firmwares = tuple(f for f in Firmware if any(m.firmware is f for m in tftp))
    for firmware in firmwares if machines else (scenario.pxe.firmware,):
        name = "default" if firmware is Firmware.BIOS else f"default-{firmware.value}"
        mac = next(m for n in range(99) if (m := pinned_mac(lab, f"pxe-{name}", n)) not in macs)
        macs.add(mac)
        twins.append((name, mac, None, None, firmware, hosts.default_cmdline if hosts else "",
                      Netboot.TFTP))
    return tuple(TerminalPlan(
        name=f"pxe-{name}", domain=domain_name(lab, f"pxe-{name}"), nic_model="virtio",
        mac=mac, ip=ip or "", memory_mib=256 if firmware is Firmware.BIOS else UEFI_PXE_MEMORY,
        vcpus=1, dhcp_root_path=root_path, cmdline=cmdline,
        console_log=lab_dir / "console" / f"pxe-{name}.log", boot="pxe", firmware=firmware,
        nvram=None if firmware is Firmware.BIOS else lab_dir / "nvram" / f"pxe-{name}.fd",
        netboot=netboot,
        ip6=slaac_address(ipv6_subnet(subnet), mac)
        if scenario.lab.addresses is not Addresses.IPV4 else "",
    ) for name, mac, ip, root_path, firmware, cmdline, netboot in twins)


def _sample(machines: tuple[MachinePlan, ...]) -> tuple[MachinePlan, ...]:
    """The machines that get a twin: the first TWIN_SAMPLE, and the first of each firmware
    and way of booting the sample would miss (each of the site's is booted at least once)."""
    picked = list(machines[:TWIN_SAMPLE])
    for firmware in Firmware:
        for netboot in Netboot:
            if not any(m.firmware is firmware and m.netboot is netboot for m in picked):
                picked += [m for m in machines
                           if m.firmware is firmware and m.netboot is netboot][:1]
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
