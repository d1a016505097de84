"""Reading a scenario file (TOML) into the model, once: the first problem is a ScenarioError
that names the file, the key, the bad value and the fix."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlab.build import disk
from vlab.build.disk import filesystem_of
from vlab.errors import ScenarioError
from vlab.scenario import machine_tables, node_tables, terminal_tables
from vlab.scenario.model import (
    EXPORT_PATH_RE,
    SYSTEM_DIRS,
    Addresses,
    AfterBoot,
    Arch,
    Boot,
    Fault,
    FaultAfter,
    FaultKind,
    Firmware,
    Hypervisor,
    Initrd,
    InitrdBuilder,
    Kernel,
    KernelSource,
    Lab,
    LabHostMode,
    Machine,
    Netboot,
    NfsVersion,
    NicDriver,
    Probe,
    Pxe,
    Root,
    RootSource,
    RootVia,
    Scenario,
    Terminal,
    Writable,
)
from vlab.scenario.table import Table


def load(path: Path) -> Scenario:
    """Read and validate a scenario file; raise ScenarioError on the first problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(path, "", "no such file", "give the path of a scenario .toml") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ScenarioError(path, "", f"cannot read: {err}", "check the file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(path, "", f"not valid TOML: {err}", "fix the TOML syntax") from None
    return parse(path, data)


def parse(path: Path, data: Mapping[str, Any]) -> Scenario:
    top = Table(path, "", data, ("lab", "root", "kernel", "initrd", "terminal", "pxe", "machine",
                                 "probe", "node", "fault"))
    root = _root(Table(path, "root", top.sub("root", {}), _ROOT_KEYS))
    initrd_t = Table(path, "initrd", top.sub("initrd", {}), ("builder", "nic_drivers"))
    initrd = Initrd(
        builder=initrd_t.choice("builder", InitrdBuilder, InitrdBuilder.VLAB),
        nic_drivers=_nic_drivers(initrd_t, _is_xen(top)),
    )
    lab = _lab(Table(path, "lab", top.sub("lab"), _LAB_KEYS), initrd.builder,
               has_nodes=bool(top.data.get("node")))
    pxe = machine_tables.pxe(top, lab.subnet)
    terminals = terminal_tables.terminals(top, initrd.nic_drivers, lab.hypervisor,
                           required=not pxe.machines)
    arch = _one_arch(path, terminals, pxe.machines)
    kernel = _kernel(Table(path, "kernel", top.sub("kernel", {}), _KERNEL_KEYS), root, arch)
    _check_builder(path, root, kernel, initrd, lab)
    probes = _probes(top, root)
    _check_arch(path, arch, root, initrd, probes)
    _check_ipv6(path, lab, initrd, terminals, pxe, bool(top.data.get("node")))
    found = node_tables.nodes(top, lab)
    node_tables.check_placement(path, lab, terminals, found)
    faults = _faults(top, root, lab, arch, bool(found))
    return Scenario(path=path, lab=lab, root=root, kernel=kernel, initrd=initrd,
                    terminals=terminals, pxe=pxe, probes=probes, nodes=found, faults=faults)


# What each kind of [[fault]] takes besides kind, after and delay: key, default, low, high, unit
_FAULT_KEYS: dict[FaultKind, tuple[tuple[str, int, int, int, str], ...]] = {
    **{k: (("down_for", 10, 1, 600, " s"),) for k in FaultKind if k.away},
    FaultKind.PACKET_LOSS: (("loss", 20, 1, 100, "%"), ("during", 30, 1, 600, " s")),
    FaultKind.LATENCY: (("latency", 200, 10, 5000, " ms"), ("during", 30, 1, 600, " s")),
}


def _why_no_faults(root: Root, lab: Lab, arch: Arch, nodes: bool) -> str:
    """Why this scenario can have no [[fault]]s ("" if it can)."""
    if root.source not in (RootSource.BUSYBOX, RootSource.DEBIAN):
        return ("vlab watches whether a terminal carries on over SSH, which vlab sets up in "
                f'the roots it builds (busybox, debian), not in source = "{root.source.value}"')
    if arch is Arch.ARM64:
        return ("vlab watches whether a terminal carries on over SSH, which its arm64 busybox "
                "root does not have")
    if nodes:
        return ("faults are made on this machine's lab network and NFS server, and the "
                "terminals of a lab with [[node]]s run elsewhere")
    if lab.hypervisor is Hypervisor.XEN:
        return "the latency fault is QEMU's; Xen terminals are not"
    return ""


def _faults(top: Table, root: Root, lab: Lab, arch: Arch, nodes: bool) -> tuple[Fault, ...]:
    raw = top.tables("fault", 'write each as [[fault]] kind = "nfs-restart" down_for = 10')
    if not raw:
        return ()
    why = _why_no_faults(root, lab, arch, nodes)
    if why:
        raise top.error("fault", why, "remove the [[fault]] tables from this scenario")
    faults = []
    for i, item in enumerate(raw):
        first = Table(top.file, f"fault[{i}]", item, tuple(item))  # its kind names its keys
        if "kind" not in item:
            raise first.error("kind", "is missing", 'add kind = "nfs-restart" (or "nfs-pause", '
                              '"dhcp-restart", "packet-loss", "latency")')
        kind = first.choice("kind", FaultKind, FaultKind.NFS_RESTART)
        own = _FAULT_KEYS[kind]
        t = Table(top.file, f"fault[{i}]", item, ("kind", "after", "delay", "resume_within",
                                                  *(k[0] for k in own)))
        after = t.choice("after", FaultAfter, FaultAfter.OK)
        values = {key: t.int_in(key, default, low, high, unit)
                  for key, default, low, high, unit in own}
        faults.append(Fault(kind=kind, after=after, delay=t.int_in("delay", 0, 0, 600, " s"),
                            down_for=values.get("down_for", 0), during=values.get("during", 0),
                            loss=values.get("loss", 0), latency=values.get("latency", 0),
                            resume_within=t.int_in("resume_within", 60, 1, 600, " s")))
    return tuple(faults)


def _probes(top: Table, root: Root) -> tuple[Probe, ...]:
    raw = top.tables("probe", 'write each as [[probe]] name = "nfs root" run = "..."')
    if raw and root.source not in (RootSource.BUSYBOX, RootSource.DEBIAN):
        raise top.error("probe", f'runs over SSH, which vlab sets up in the roots it '
                        f'builds (busybox, debian), not in source = "{root.source.value}"',
                        'remove the [[probe]] tables, or use a busybox or debian root')
    probes: list[Probe] = []
    names: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = Table(top.file, f"probe[{i}]", item, ("name", "run", "expect"))
        name = t.get("name", str)
        if not name.strip() or name in names:
            raise t.error("name", f"{name!r} is empty or also the name of probe"
                          f"[{names.get(name, '?')}]", "give every probe its own name")
        names[name] = i
        run = t.get("run", str)
        if not run.strip():
            raise t.error("run", "is empty", 'give a shell command, e.g. run = "touch /tmp/x"')
        probes.append(Probe(name=name, run=run, expect=t.get("expect", str, "") or None))
    return tuple(probes)


# Trees of the machine's own system: no folder in them is a terminal's root. (/usr/local and
# /var/lib hold a site's own things, roots among them; /var/lib itself is a SYSTEM_DIR.)
SYSTEM_TREES = frozenset(tuple(p.split("/")) for p in (
    "proc", "sys", "dev", "run", "etc", "boot", "bin", "sbin", "lib", "lib32", "lib64", "libx32",
    "usr/bin", "usr/sbin", "usr/lib", "usr/lib32", "usr/lib64", "usr/libexec", "usr/include",
    "usr/share", "var/log", "var/spool", "var/mail", "var/backups", "var/cache/apt",
    "var/lib/dpkg", "var/lib/apt", "var/lib/libvirt", "var/lib/vlab"))


def _system_folder(path: Path) -> bool:
    """Is path a folder of the machine's own system, in one of its trees, or above one?"""
    return (path in SYSTEM_DIRS or any(d.is_relative_to(path) for d in SYSTEM_DIRS)
            or any(path.parts[1:1 + len(t)] == t for t in SYSTEM_TREES))


_ROOT_KEYS = ("source", "path", "partition", "boot_partition", "suite", "packages",
              "after_boot", "writable")
_KERNEL_KEYS = ("source", "package", "version")
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")


def _root(t: Table) -> Root:
    source = t.choice("source", RootSource, RootSource.BUSYBOX)
    path = None
    if source in (RootSource.DIR, RootSource.IMAGE):
        raw = t.get("path", str)
        # Relative paths are relative to the scenario file, like any config file's.
        kind = "directory" if source is RootSource.DIR else "file"
        try:
            path = (t.file.parent / raw).resolve()
        except (RuntimeError, OSError) as err:  # a symlink loop (RuntimeError before 3.13)
            raise t.error("path", f"{raw!r} cannot be followed to a {kind} ({err})",
                          f"give the path of the root {kind} (relative to the scenario file)"
                          ) from None
        if not (path.is_dir() if source is RootSource.DIR else path.is_file()):
            raise t.error("path", f"{raw!r} is not a {kind} ({path})",
                          f"give the path of the root {kind} (relative to the scenario file)")
        if source is RootSource.DIR and _system_folder(path):
            raise t.error("path", f"{raw!r} is {path}, a folder of this machine's own system",
                          "give a folder that holds only the terminal's root tree (exported "
                          "to every terminal, read by its builder)")
        if source is RootSource.DIR and not EXPORT_PATH_RE.fullmatch(str(path)):
            raise t.error("path", f"{raw!r} ({path}) has a character that ganesha.conf, "
                          "/etc/exports or root= cannot carry", "move the root to a path of "
                          "letters, digits and . _ - + @ , / only")
    elif "path" in t.data:
        raise t.error("path", f'is only for source = "dir" or "image", not "{source.value}"',
                      "remove path, or change source")
    partition, boot_partition = _partition(t, "partition"), _partition(t, "boot_partition")
    if source is RootSource.IMAGE:
        assert path is not None
        _check_image(t, path, partition, boot_partition)
    elif partition is not None or boot_partition is not None:
        raise t.error("partition" if partition is not None else "boot_partition",
                      f'is only for source = "image", not "{source.value}"',
                      "remove it, or change source")
    packages = t.get("packages", list, [])
    for p in packages:
        if not isinstance(p, str) or not PACKAGE_RE.fullmatch(p):
            raise t.error("packages", f"{p!r} is not a Debian package name",
                          'list package names, e.g. packages = ["openssh-server"]')
    if source is not RootSource.DEBIAN and ("suite" in t.data or packages):
        raise t.error("suite" if "suite" in t.data else "packages",
                      f'is only for source = "debian", not "{source.value}"',
                      "remove it, or use source = \"debian\"")
    suite = t.get("suite", str, "trixie")
    if not re.fullmatch(r"^[a-z]+$", suite):
        raise t.error("suite", f"{suite!r} is not a Debian suite name",
                      'use e.g. "trixie" or "bookworm"')
    if source is not RootSource.BUSYBOX and "after_boot" in t.data:
        raise t.error("after_boot", f'is only for source = "busybox" (vlab\'s own init does '
                      f'it), not "{source.value}", whose own init decides',
                      "remove after_boot, or use source = \"busybox\"")
    return Root(source=source, after_boot=t.choice("after_boot", AfterBoot, AfterBoot.SHELL),
                writable=t.choice("writable", Writable, Writable.TMPFS), path=path,
                suite=suite, packages=tuple(packages), partition=partition,
                boot_partition=boot_partition)


def _partition(t: Table, name: str) -> int | str | None:
    """A partition as the scenario names it: its number, or its partition or filesystem label."""
    if name not in t.data:
        return None
    value = t.data[name]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise t.error(name, f"must be a partition number or a label, not {value!r}",
                      f'write e.g. {name} = 2 or {name} = "root"')
    if isinstance(value, int) and not 1 <= value <= disk.MAX_GPT_ENTRIES:
        raise t.error(name, f"{value} is not a partition number", "partitions count from 1")
    if isinstance(value, str):
        t.get(name, str)  # refuses control characters
        if not value:
            raise t.error(name, "is empty", f'give a label, e.g. {name} = "root"')
    return value


def _check_image(t: Table, path: Path, partition: int | str | None,
                 boot_partition: int | str | None) -> None:
    """Refuse, before anything is made, an image vlab cannot boot from. A qcow2 image's
    partitions are chosen once it is converted (vlab.images); a raw one's here."""
    raw = t.data["path"]
    try:
        fmt = disk.image_format(path)
        if fmt == "qcow2":
            if problem := disk.qcow2_problem(path):
                raise t.error("path", f"{raw!r} {problem}", "give a self-contained image")
            return
        if filesystem_of(path) is not None:
            if partition is not None or boot_partition is not None:
                key = "partition" if partition is not None else "boot_partition"
                raise t.error(key, f"{raw!r} is a bare filesystem image: it has no partitions",
                              f"remove {key}")
            return
        parts = disk.partitions(path)
        if not parts:
            raise t.error("path", f"{raw!r} holds no filesystem vlab can mount and no "
                          "partition table", "give a raw or qcow2 disk image (GPT or MBR) or a "
                          "bare ext2/3/4, xfs, btrfs or squashfs image, e.g. made with "
                          "mkfs.ext4 -d ROOTDIR FILE 1G")
        disk.choose(parts, partition, boot_partition)
    except disk.DiskError as err:
        raise t.error(err.key, f"{raw!r} {err}", "fix the image or name the partitions to use "
                      "in [root] partition and boot_partition") from None
    except OSError as err:
        raise t.error("path", f"{raw!r} cannot be read: {err.strerror}",
                      "give a readable image file") from None



def _one_arch(path: Path, terminals: tuple[Terminal, ...],
              machines: tuple[Machine, ...]) -> Arch:
    """A scenario has one root, kernel and initrd, so its terminals and machines share one
    architecture."""
    booters = [*(("terminal", i, t.arch) for i, t in enumerate(terminals)),
               *(("machine", i, m.arch) for i, m in enumerate(machines))]
    if not booters:
        return Arch.AMD64
    first = booters[0]
    for kind, i, arch in booters[1:]:
        if arch is not first[2]:
            raise ScenarioError(path, f"{kind}[{i}].arch", f'"{arch.value}", but '
                                f'{first[0]}[{first[1]}] is "{first[2].value}": the '
                                "terminals and machines of a scenario boot one root, kernel "
                                "and initrd", "put the machines of each architecture in a "
                                "scenario (and a TFTP tree) of their own")
    return first[2]


def _check_arch(path: Path, arch: Arch, root: Root, initrd: Initrd,
                probes: tuple[Probe, ...]) -> None:
    """What an arm64 scenario cannot have on an x86 machine: programs of the root run."""
    if arch is Arch.AMD64:
        return
    if probes:
        raise ScenarioError(path, "probe", "runs over SSH, and vlab's arm64 busybox root has "
                            "no SSH server (the machine's dropbear is an x86 program)",
                            "remove the [[probe]] tables from the arm64 scenario")
    if root.source is RootSource.DEBIAN:
        raise ScenarioError(path, "root.source", '"debian" for arm64 terminals: mmdebstrap '
                            "--arch arm64 runs the new root's package scripts, arm64 "
                            "programs, which this x86 machine runs only through qemu-user "
                            "registered with binfmt_misc (a machine-wide change vlab does "
                            "not make)", 'use source = "busybox", or a dir or image root '
                            "bootstrapped for arm64 elsewhere (e.g. on an arm64 machine, or "
                            "here after apt install qemu-user-static binfmt-support)")
    if initrd.builder is not InitrdBuilder.VLAB:
        raise ScenarioError(path, "initrd.builder", f'"{initrd.builder.value}" for arm64 '
                            "terminals: the root's builder is an arm64 program, which this "
                            "x86 machine cannot run in its sandbox", 'use builder = "vlab"')


def _check_ipv6(path: Path, lab: Lab, initrd: Initrd, terminals: tuple[Terminal, ...],
                pxe: Pxe, has_nodes: bool) -> None:
    """What an IPv6 lab does not do (yet), named before anything is built."""
    if lab.addresses is Addresses.IPV4:
        return
    key = "lab.addresses"
    said = f'"{lab.addresses.value}"'
    if initrd.builder is not InitrdBuilder.VLAB:
        raise ScenarioError(path, key, f"{said} with the {initrd.builder.value} initrd: vlab "
                            "proves IPv6 roots with its own initrd (SLAAC, [addr]:/path); a "
                            "distribution initrd needs its own IPv6 setup (dracut: ip=auto6)",
                            'use [initrd] builder = "vlab", or addresses = "ipv4"')
    if lab.hypervisor is Hypervisor.XEN or has_nodes:
        raise ScenarioError(path, key, f"{said} in a lab with Xen or [[node]]s: their "
                            "networks are IPv4 networks vlab does not make",
                            'use addresses = "ipv4"')
    if lab.root_via is RootVia.DHCP:
        raise ScenarioError(path, key, f'{said} with root_via = "dhcp": the root path comes by '
                            "DHCPv4 (option 17), and busybox has no DHCPv6 client",
                            'use root_via = "cmdline"')
    if pxe.nfs_server is not None:
        raise ScenarioError(path, "pxe.nfs_server", f"{pxe.nfs_server} with addresses = "
                            f"{said}: the terminals mount the root over IPv6, and vlab takes a "
                            "site's server by IPv4 address", "leave [pxe] nfs_server out (the "
                            'twins mount the lab\'s server), or use addresses = "ipv4"')
    for i, m in enumerate(pxe.machines):
        where = f"machine[{i}]"
        if m.netboot is not Netboot.TFTP:
            raise ScenarioError(path, f"{where}.netboot", f'"{m.netboot.value}" in a lab with '
                                f"addresses = {said}: vlab boots IPv6 hosts by PXE over "
                                "TFTP", 'use netboot = "tftp", or addresses = "ipv4"')
        if lab.addresses is Addresses.IPV6 and m.firmware is Firmware.BIOS:
            raise ScenarioError(path, f"{where}.firmware", '"bios" in an IPv6-only lab: '
                                "SeaBIOS's iPXE ROM does no PXE over IPv6 here; a BIOS host on "
                                "an IPv6-only network needs an iPXE built with IPv6 and a "
                                "DHCPv6 boot file URL (option 59)", 'use firmware = "uefi", or '
                                'addresses = "dual" (BIOS hosts boot over IPv4 there)')
        if lab.addresses is Addresses.IPV6 and m.ip is not None:
            raise ScenarioError(path, f"{where}.ip", f"{m.ip} in an IPv6-only lab, which has no "
                                "DHCPv4", "leave ip out (its IPv6 address is SLAAC's, from "
                                'its MAC), or use addresses = "dual"')
    for i, t in enumerate(terminals):
        if t.boot is Boot.PXE and t.firmware is Firmware.BIOS and \
                lab.addresses is Addresses.IPV6:
            raise ScenarioError(path, f"terminal[{i}].firmware", '"bios" in an IPv6-only lab: '
                                "SeaBIOS's iPXE ROM does no PXE over IPv6 here; a BIOS host on "
                                "an IPv6-only network needs an iPXE built with IPv6 and a "
                                "DHCPv6 boot file URL (option 59)",
                                'use firmware = "uefi" (OVMF does PXE over IPv6)')


def _kernel(t: Table, root: Root, arch: Arch) -> Kernel:
    default = KernelSource.DEBIAN if root.source is RootSource.BUSYBOX else KernelSource.ROOT
    source = t.choice("source", KernelSource, default)
    if source is KernelSource.ROOT and root.source is RootSource.BUSYBOX:
        raise t.error("source", '"root" but the busybox root has no kernel',
                      'use source = "debian"')
    if source is KernelSource.ROOT and "package" in t.data:
        raise t.error("package", 'names the Debian package of source = "debian", not "root", '
                      "which boots the kernel installed in the root",
                      "remove package (pick the root's kernel with version), or use "
                      'source = "debian"')
    package = t.get("package", str, f"linux-image-{arch.value}")
    if not re.fullmatch(r"^linux-image-[a-z0-9.+-]+$", package):
        raise t.error(
            "package", f"{package!r} is not a kernel package name",
            'name a Debian kernel package, e.g. "linux-image-amd64"',
        )
    version = t.get("version", str, "") or None
    if version is not None and source is not KernelSource.ROOT:
        raise t.error("version", 'picks a kernel installed in the root: only with source = "root"',
                      "remove version, or name the package of that kernel in package")
    return Kernel(source=source, package=package, version=version)


def _check_builder(path: Path, root: Root, kernel: Kernel, initrd: Initrd, lab: Lab) -> None:
    """Combinations that cannot boot are refused here, before anything is built."""
    if initrd.builder is InitrdBuilder.VLAB:
        return
    name = initrd.builder.value
    if root.source is RootSource.BUSYBOX:
        raise ScenarioError(path, "initrd.builder", f'"{name}" runs inside the root, and the '
                            "busybox root has none", 'use builder = "vlab", or a debian, dir or '
                            "image root that has it installed")
    if kernel.source is not KernelSource.ROOT:
        raise ScenarioError(path, "kernel.source", f'"{name}" builds for a kernel installed in '
                            "the root", 'use source = "root"')
    if root.writable is Writable.OVERLAY:
        raise ScenarioError(path, "root.writable", f'"overlay" is done by vlab\'s own initrd, '
                            f'not by {name}', 'use builder = "vlab", or writable = "tmpfs"')
    if initrd.builder is InitrdBuilder.INITRAMFS_TOOLS and lab.nfs_version is not NfsVersion.V3:
        raise ScenarioError(path, "lab.nfs_version", f'"{lab.nfs_version.value}": '
                            "initramfs-tools mounts with klibc's nfsmount, which speaks only "
                            "NFSv2/v3", 'use nfs_version = "3" (the default with this builder)')


_LAB_KEYS = ("name", "hypervisor", "uri", "lab_host", "nfs_version", "timeout", "stall", "subnet",
             "root_via", "addresses", "dhcp_lease")


def _lab(t: Table, builder: InitrdBuilder, has_nodes: bool) -> Lab:
    subnet_raw = t.data.get("subnet")
    subnet = None
    if subnet_raw is not None:
        text = t.get("subnet", str)
        subnet = t.network("subnet", 'write it like "10.213.7.0/24"')
        if subnet.prefixlen != 24 or not subnet.is_private:
            raise t.error("subnet", f"{text!r} is not a private /24",
                          'use a private /24 such as "10.213.7.0/24"')
    hypervisor = t.choice("hypervisor", Hypervisor, Hypervisor.QEMU)
    # A Xen lab's terminals run on a Xen host: this one ([lab] uri), or its [[node]]s, and
    # then the lab host ([lab] uri) is the QEMU libvirtd that serves their network and root.
    xen_here = hypervisor is Hypervisor.XEN and not has_nodes
    uri = t.get("uri", str, "xen:///system" if xen_here else "qemu:///system")
    driver = "xen" if xen_here else "qemu"
    # No +ext transport: it runs a program named in the URI.
    transport = r"(\+(ssh|libssh|libssh2|tls|tcp|unix))?"
    if not re.fullmatch(rf"{driver}{transport}://[^\s/?]*/(system|session)?(\?\S*)?", uri):
        why = (f'hypervisor = "{hypervisor.value}"' if driver == "xen" or not has_nodes
               else "the lab host of a Xen lab with [[node]]s, which serves their network "
               "and NFS root; its Xen hosts are the [[node]]s")
        raise t.error("uri", f"{uri!r} is not a {driver} libvirt URI ({why})",
                      f'use "{driver}:///system" (or {driver}+ssh://user@host/system)')
    node_tables.check_uri_query(t, "uri", uri)
    if xen_here and t.data.get("lab_host") == LabHostMode.ISOLATED.value:
        raise t.error("lab_host", '"isolated" starts a QEMU libvirtd, which cannot run Xen guests',
                      'use lab_host = "system" (the Xen host\'s libvirtd), leave lab_host '
                      'out, or put the terminals on Xen hosts ([[node]] uri = "xen+ssh://...")')
    return Lab(
        name=t.name("name", t.get("name", str)),
        hypervisor=hypervisor,
        uri=uri,
        lab_host=t.choice("lab_host", LabHostMode, LabHostMode.AUTO),
        nfs_version=_nfs_version(t, builder),
        timeout=t.int_in("timeout", 120, 10, 3600, " s"),
        stall=t.int_in("stall", 45, 5, 3600, " s"),
        subnet=subnet,
        root_via=t.choice("root_via", RootVia, RootVia.CMDLINE),
        addresses=t.choice("addresses", Addresses, Addresses.IPV4),
        dhcp_lease=_dhcp_lease(t),
    )


def _dhcp_lease(t: Table) -> int | None:
    """The lab network's DHCP lease, in seconds: dnsmasq gives none shorter than 2 minutes."""
    if "dhcp_lease" not in t.data:
        return None
    if t.data.get("addresses") == Addresses.IPV6.value:
        raise t.error("dhcp_lease", 'addresses = "ipv6" has no DHCPv4 lease (its terminals\' '
                      "addresses come by SLAAC)",
                      'leave dhcp_lease out, or use addresses = "dual" or "ipv4"')
    return t.int_in("dhcp_lease", 3600, 120, 7 * 86400, " s")


def _nfs_version(t: Table, builder: InitrdBuilder) -> NfsVersion:
    # Accept 3 and 4 written as TOML integers too. Not a minor version as a number: TOML
    # reads 4.10 as the float 4.1, so the version written could not be told from another.
    raw = t.data.get("nfs_version")
    if isinstance(raw, float):
        raise t.error("nfs_version", f"{raw!r} is a number, and TOML reads 4.10 as 4.1 too",
                      f'write the version as a string: nfs_version = "{raw}"')
    if isinstance(raw, int) and not isinstance(raw, bool):
        t = Table(t.file, t.prefix, {**t.data, "nfs_version": str(raw)}, tuple(t.data))
    # Not 4.2: a Linux 6.6+ client reads through READ_PLUS there, which the lab's nfs-ganesha
    # (4.3, Debian 12) answers wrongly: every exec of a trixie root fails with EIO.
    default = NfsVersion.V3 if builder is InitrdBuilder.INITRAMFS_TOOLS else NfsVersion.V4_1
    return t.choice("nfs_version", NfsVersion, default)


def _is_xen(top: Table) -> bool:
    lab = top.data.get("lab")
    return isinstance(lab, dict) and lab.get("hypervisor") == Hypervisor.XEN.value


def _nic_drivers(t: Table, xen: bool) -> tuple[NicDriver, ...]:
    raw = t.get("nic_drivers", list, ["xen-netfront" if xen else "virtio_net"])
    allowed = ", ".join(f'"{e.value}"' for e in NicDriver)
    drivers: list[NicDriver] = []
    for value in raw:
        try:
            drivers.append(NicDriver(value))
        except ValueError:
            raise t.error("nic_drivers", f"{value!r} is not a supported NIC driver",
                          f"list drivers from {allowed}") from None
    if not drivers or len(set(drivers)) != len(drivers):
        raise t.error("nic_drivers", f"{raw!r} must name each driver once, at least one",
                      'e.g. nic_drivers = ["virtio_net", "e1000"]')
    return tuple(drivers)
