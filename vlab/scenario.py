"""Scenario files (TOML) parsed once into frozen dataclasses.

This module only holds user configuration. Every error names the file, the key, the bad
value and the fix. Runtime state lives in state.py, derived values in plan.py.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from vlab.errors import ScenarioError

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
# Terminal MACs live in the hypervisor's own range (the page's vif mac= advice for Xen).
# (plan.py pins MACs in the same ranges)
MAC_PREFIX = {"kvm": "52:54:00", "qemu": "52:54:00", "xen": "00:16:3e"}
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
NAME_FIX = "use 1-24 characters: lowercase letters, digits and '-', starting with a letter"


class Hypervisor(StrEnum):
    KVM = "kvm"
    QEMU = "qemu"
    XEN = "xen"


class HostMode(StrEnum):
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


class Boot(StrEnum):
    KERNEL = "kernel"
    PXE = "pxe"


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


@dataclass(frozen=True)
class Lab:
    name: str
    hypervisor: Hypervisor
    uri: str
    host: HostMode
    nfs_version: NfsVersion
    timeout: int
    stall: int  # seconds of console silence that count as a stalled guest
    subnet: ipaddress.IPv4Network | None
    root_via: RootVia


@dataclass(frozen=True)
class Root:
    source: RootSource
    after_boot: AfterBoot
    writable: Writable
    path: Path | None  # dir and image
    suite: str  # debian
    packages: tuple[str, ...]  # debian


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
    root: str | None
    dhcp_root_path: str | None
    cmdline: str
    host: str | None = None  # a [[libvirt_host]] name or "local"; None: placed by vlab


@dataclass(frozen=True)
class Host:
    """A physical terminal that PXE-boots the lab's root (vlab pxe)."""

    name: str
    mac: str
    ip: ipaddress.IPv4Address | None
    root: str | None
    cmdline: str


@dataclass(frozen=True)
class LibvirtHost:
    """Another hypervisor host the lab's terminals may run on, reached through libvirt."""

    name: str
    uri: str  # qemu+ssh://[user@]host[:port]/system[?keyfile=...]
    capacity: int | None  # at most this many of the lab's terminals
    network: str | None  # an existing libvirt network there that its terminals join...
    bridge: str | None  # ...or an existing bridge
    nfs_server: ipaddress.IPv4Address  # the NFS server address as its terminals reach it
    clients: ipaddress.IPv4Network | None  # what the lab's NFS server admits from there
    netns: str | None  # vlab reaches it from inside this network namespace
    files: str  # where vlab ships the kernel and initrd there


LOCAL = "local"  # the lab's own host: [lab] uri, with the network and NFS server vlab makes
SHIP_DIR = "/var/cache/vlab/shipped"


@dataclass(frozen=True)
class Pxe:
    nfs_server: ipaddress.IPv4Address | None  # None: the lab's own server
    hosts: tuple[Host, ...]


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
    checks: tuple[Check, ...] = ()
    libvirt_hosts: tuple[LibvirtHost, ...] = ()


@dataclass(frozen=True)
class Check:
    """A command that must succeed over SSH on every terminal once it is up."""

    name: str
    run: str
    expect: str | None  # a text its output must contain


E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")


class _Table:
    """One TOML table, read key by key, so every error can name `table.key`."""

    def __init__(self, file: Path, prefix: str, data: Mapping[str, Any], known: tuple[str, ...]):
        self.file, self.prefix, self.data = file, prefix, data
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
                raise ScenarioError(file, self.key(key), "unknown key", fix)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, why: str, fix: str) -> ScenarioError:
        return ScenarioError(self.file, self.key(name), why, fix)

    def get(self, name: str, kind: type[T], default: T | None = None) -> T:
        if name not in self.data:
            if default is not None:
                return default
            if kind is dict:
                raise self.error(name, "is missing", f"add a [{self.key(name)}] table")
            raise self.error(name, "is missing", f"add {name} = ... to [{self.prefix}]")
        value = self.data[name]
        # TOML booleans are ints in Python: never accept one where a number is meant.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            if kind is dict:
                fix = f"write it as a [{self.key(name)}] table"
            else:
                example = _toml(default) if default is not None else _example(kind)
                fix = f"write it as {_kind_name(kind)}, e.g. {name} = {example}"
            raise self.error(
                name, f"must be {_kind_name(kind)}, not {_kind_name(type(value))} "
                f"({_toml(value)})", fix)
        return value

    def choice(self, name: str, enum: type[E], default: E) -> E:
        raw = self.get(name, str, str(default.value))
        try:
            return enum(raw)
        except ValueError:
            allowed = ", ".join(f'"{e.value}"' for e in enum)
            raise self.error(name, f"{raw!r} is not supported", f"use one of {allowed}") from None

    def int_in(self, name: str, default: int, low: int, high: int, unit: str = "") -> int:
        value = self.get(name, int, default)
        if not low <= value <= high:
            raise self.error(
                name, f"{value}{unit} is out of range", f"use a value from {low} to {high}{unit}"
            )
        return value

    def name(self, name: str, value: str) -> str:
        if not NAME_RE.match(value):
            raise self.error(name, f"{value!r} is not a valid name", NAME_FIX)
        return value


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "a boolean", list: "a list",
            dict: "a table", float: "a number"}.get(kind, kind.__name__)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _example(kind: type) -> str:
    return {str: '"text"', int: "1", bool: "true", list: "[...]"}.get(kind, "...")


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
    top = _Table(path, "", data, ("lab", "root", "kernel", "initrd", "terminal", "pxe", "host",
                                  "check", "libvirt_host"))
    root = _root(_Table(path, "root", _sub(top, "root", {}), _ROOT_KEYS))
    initrd_t = _Table(path, "initrd", _sub(top, "initrd", {}), ("builder", "nic_drivers"))
    initrd = Initrd(
        builder=initrd_t.choice("builder", InitrdBuilder, InitrdBuilder.VLAB),
        nic_drivers=_nic_drivers(initrd_t, _is_xen(top)),
    )
    lab = _lab(_Table(path, "lab", _sub(top, "lab"), _LAB_KEYS), initrd.builder)
    kernel = _kernel(_Table(path, "kernel", _sub(top, "kernel", {}), _KERNEL_KEYS), root)
    _check_builder(path, root, kernel, initrd, lab)
    pxe = _pxe(path, top)
    terminals = _terminals(path, top, initrd.nic_drivers, lab.hypervisor,
                           required=not pxe.hosts)
    checks = _checks(path, top, root)
    hosts = _libvirt_hosts(path, top, lab)
    _check_placement(path, terminals, hosts)
    return Scenario(path=path, lab=lab, root=root, kernel=kernel, initrd=initrd,
                    terminals=terminals, pxe=pxe, checks=checks, libvirt_hosts=hosts)


_LIBVIRT_HOST_KEYS = ("name", "uri", "capacity", "network", "bridge", "nfs_server", "clients",
                      "netns", "files")
SSH_URI_RE = re.compile(r"^qemu\+ssh://([^@/?\s]+@)?([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(:\d+)?"
                        r"/system(\?\S*)?$")


def _libvirt_hosts(path: Path, top: _Table, lab: Lab) -> tuple[LibvirtHost, ...]:
    raw = top.data.get("libvirt_host", [])
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise ScenarioError(path, "libvirt_host", "must be an array of tables",
                            'write each hypervisor host as a [[libvirt_host]] table')
    if raw and lab.hypervisor is Hypervisor.XEN:
        raise ScenarioError(path, "libvirt_host", "several hosts are for QEMU/KVM labs",
                            "remove the [[libvirt_host]] tables, or use hypervisor = \"qemu\"")
    if raw and lab.root_via is RootVia.DHCP:
        raise ScenarioError(path, "lab.root_via", '"dhcp" hands out the root from the lab\'s '
                            "own DHCP server, which terminals on other hosts do not reach",
                            'use root_via = "cmdline" with [[libvirt_host]] tables')
    hosts: list[LibvirtHost] = []
    names: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = _Table(path, f"libvirt_host[{i}]", item, _LIBVIRT_HOST_KEYS)
        name = t.name("name", t.get("name", str))
        if name == LOCAL or name in names:
            raise t.error("name", f"{name!r} is also the name of " + (
                "the lab's own host" if name == LOCAL else f"libvirt_host[{names[name]}]"),
                "give every host its own name")
        names[name] = i
        uri = t.get("uri", str)
        if not SSH_URI_RE.match(uri):
            raise t.error("uri", f"{uri!r} is not a qemu+ssh:// URI of another host",
                          "write it like \"qemu+ssh://root@host.example/system\" (vlab ships the "
                          "kernel and initrd over the same SSH; the lab's own host is [lab] uri)")
        network = t.get("network", str, "") or None
        bridge = t.get("bridge", str, "") or None
        if network is None and bridge is None:
            raise t.error("network", "is missing: its terminals join a network that is there "
                          "already", 'add network = "default" (a libvirt network on that host) '
                          'or bridge = "br0" (a bridge there on the terminals\' LAN)')
        if network is not None and bridge is not None:
            raise t.error("bridge", "is given with network: its terminals join one of them",
                          "keep network (a libvirt network) or bridge, not both")
        for key, value in (("network", network), ("bridge", bridge)):
            if value is not None and not re.match(r"^[A-Za-z0-9_.-]{1,64}$", value):
                raise t.error(key, f"{value!r} is not a libvirt network or bridge name",
                              "give the name as virsh net-list or ip link shows it")
        if "nfs_server" not in t.data:
            raise t.error("nfs_server", "is missing", "add the address at which its terminals "
                          'reach the NFS server, e.g. nfs_server = "10.0.0.1"')
        nfs_server = _ip(t, "nfs_server")
        assert nfs_server is not None
        clients = None
        if "clients" in t.data:
            text = t.get("clients", str)
            try:
                clients = ipaddress.IPv4Network(text)
            except ValueError:
                raise t.error("clients", f"{text!r} is not an IPv4 network",
                              'give the subnet its terminals\' addresses come from, e.g. '
                              '"10.0.1.0/24"') from None
        netns = t.get("netns", str, "") or None
        if netns is not None and not re.match(r"^[A-Za-z0-9_.-]{1,64}$", netns):
            raise t.error("netns", f"{netns!r} is not a network namespace name",
                          "give a name as ip netns list shows it, or leave netns out")
        files = t.get("files", str, SHIP_DIR)
        if not re.match(r"^/[A-Za-z0-9._/-]+$", files) or ".." in files.split("/"):
            raise t.error("files", f"{files!r} is not an absolute folder path",
                          f'give a folder vlab owns there, e.g. "{SHIP_DIR}"')
        hosts.append(LibvirtHost(
            name=name, uri=uri, network=network, bridge=bridge, nfs_server=nfs_server,
            capacity=t.int_in("capacity", 1000, 1, 1000) if "capacity" in t.data else None,
            clients=clients, netns=netns, files=files.rstrip("/") or "/"))
    return tuple(hosts)


def _check_placement(path: Path, terminals: tuple[Terminal, ...],
                     hosts: tuple[LibvirtHost, ...]) -> None:
    known = {LOCAL, *(h.name for h in hosts)}
    placed: dict[str, int] = {}
    for i, t in enumerate(terminals):
        if t.host is None:
            continue
        key = f"terminal[{i}].host"
        if t.host not in known:
            close = difflib.get_close_matches(t.host, sorted(known), n=1)
            raise ScenarioError(path, key, f"{t.host!r} is not a host of this lab",
                                f"did you mean '{close[0]}'?" if close else "use one of "
                                + ", ".join(f'"{k}"' for k in sorted(known))
                                + " ([[libvirt_host]] names, or the lab's own)")
        if t.host != LOCAL and t.boot is Boot.PXE:
            raise ScenarioError(path, key, f"{t.host!r}: a PXE terminal boots from the lab's "
                                "own network (its TFTP tree)", 'leave host out, or use boot = '
                                '"kernel"')
        placed[t.host] = placed.get(t.host, 0) + 1
    for i, h in enumerate(hosts):
        if h.capacity is not None and placed.get(h.name, 0) > h.capacity:
            raise ScenarioError(path, f"libvirt_host[{i}].capacity", f"{h.capacity}, but "
                                f"{placed[h.name]} terminals name host {h.name!r}",
                                "raise capacity, or put some terminals on other hosts")


def _checks(path: Path, top: _Table, root: Root) -> tuple[Check, ...]:
    raw = top.data.get("check", [])
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise ScenarioError(path, "check", "must be an array of tables",
                            'write each as [[check]] name = "nfs root" run = "..."')
    if raw and root.source not in (RootSource.BUSYBOX, RootSource.DEBIAN):
        raise ScenarioError(path, "check", f'runs over SSH, which vlab sets up in the roots it '
                            f'builds (busybox, debian), not in source = "{root.source.value}"',
                            'remove the [[check]] tables, or use a busybox or debian root')
    checks: list[Check] = []
    names: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = _Table(path, f"check[{i}]", item, ("name", "run", "expect"))
        name = t.get("name", str)
        if not name.strip() or name in names:
            raise t.error("name", f"{name!r} is empty or also the name of check"
                          f"[{names.get(name, '?')}]", "give every check its own name")
        names[name] = i
        run = t.get("run", str)
        if not run.strip():
            raise t.error("run", "is empty", 'give a shell command, e.g. run = "touch /tmp/x"')
        checks.append(Check(name=name, run=run, expect=t.get("expect", str, "") or None))
    return tuple(checks)


def _ip(t: _Table, key: str) -> ipaddress.IPv4Address | None:
    if key not in t.data:
        return None
    raw = t.get(key, str)
    try:
        return ipaddress.IPv4Address(raw)
    except ValueError:
        raise t.error(key, f"{raw!r} is not an IPv4 address",
                      "the initrd mounts by address: write it like \"10.0.0.5\"") from None


def _root_override(t: _Table) -> str | None:
    """The page's root=SERVER:/path override (of a terminal or a host), or None."""
    root = t.get("root", str, "") or None
    if root is None:
        return None
    server, sep, path = root.rpartition(":")
    if not re.match(r"^/[A-Za-z0-9._/-]*$", path):
        raise t.error("root", f"{root!r} is not an NFS root",
                      'write it as the page does: "SERVER-IP:/path" or "/path"')
    if sep and not re.match(r"^[0-9.]+$", server):
        raise t.error("root", f"the server {server!r} is a name, but the initrd mounts "
                      "before any name service runs", "give the server's IP address")
    return root


def _cmdline(t: _Table) -> str:
    cmdline = t.get("cmdline", str, "")
    if any(c in cmdline for c in "\n\r\"'<>&"):
        raise t.error("cmdline", f"{cmdline!r} contains a character a kernel command line "
                      "cannot carry", "use plain space-separated key=value words")
    return cmdline


def _pxe(path: Path, top: _Table) -> Pxe:
    pxe_t = _Table(path, "pxe", _sub(top, "pxe", {}), ("nfs_server",))
    raw = top.data.get("host", [])
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise ScenarioError(path, "host", "must be an array of tables",
                            "write each physical host as a [[host]] table")
    hosts: list[Host] = []
    names: dict[str, int] = {}
    macs: dict[str, int] = {}
    ips: dict[ipaddress.IPv4Address, int] = {}
    for i, item in enumerate(raw):
        t = _Table(path, f"host[{i}]", item, ("name", "mac", "ip", "root", "cmdline"))
        name = t.name("name", t.get("name", str))
        if name in names:
            raise t.error("name", f"{name!r} is also the name of host[{names[name]}]",
                          "give every host its own name")
        names[name] = i
        if "mac" not in t.data:
            raise t.error("mac", "is missing", 'a physical host is known by its MAC: '
                          'add mac = "00:11:22:33:44:55"')
        mac = _mac(t, macs, i, "host")
        assert mac is not None
        ip = _ip(t, "ip")
        if ip is not None and ip in ips:
            raise t.error("ip", f"{ip} is also the address of host[{ips[ip]}]",
                          "give every host its own address")
        if ip is not None:
            ips[ip] = i
        hosts.append(Host(name=name, mac=mac, ip=ip, root=_root_override(t),
                          cmdline=_cmdline(t)))
    return Pxe(nfs_server=_ip(pxe_t, "nfs_server"), hosts=tuple(hosts))


_ROOT_KEYS = ("source", "path", "suite", "packages", "after_boot", "writable")
_KERNEL_KEYS = ("source", "package", "version")
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")


def _root(t: _Table) -> Root:
    source = t.choice("source", RootSource, RootSource.BUSYBOX)
    path = None
    if source in (RootSource.DIR, RootSource.IMAGE):
        raw = t.get("path", str)
        # Relative paths are relative to the scenario file, like any config file's.
        path = (t.file.parent / raw).resolve()
        kind = "directory" if source is RootSource.DIR else "file"
        if not (path.is_dir() if source is RootSource.DIR else path.is_file()):
            raise t.error("path", f"{raw!r} is not a {kind} ({path})",
                          f"give the path of the root {kind} (relative to the scenario file)")
        if source is RootSource.IMAGE and filesystem_of(path) is None:
            raise t.error("path", f"{raw!r} holds no filesystem vlab can mount",
                          "give a raw ext2/3/4, xfs, btrfs or squashfs image (not a partitioned "
                          "disk or qcow2), e.g. made with mkfs.ext4 -d ROOTDIR FILE 1G")
    elif "path" in t.data:
        raise t.error("path", f'is only for source = "dir" or "image", not "{source.value}"',
                      "remove path, or change source")
    packages = t.get("packages", list, [])
    for p in packages:
        if not isinstance(p, str) or not PACKAGE_RE.match(p):
            raise t.error("packages", f"{p!r} is not a Debian package name",
                          'list package names, e.g. packages = ["openssh-server"]')
    if source is not RootSource.DEBIAN and ("suite" in t.data or packages):
        raise t.error("suite" if "suite" in t.data else "packages",
                      f'is only for source = "debian", not "{source.value}"',
                      "remove it, or use source = \"debian\"")
    suite = t.get("suite", str, "bookworm")
    if not re.match(r"^[a-z]+$", suite):
        raise t.error("suite", f"{suite!r} is not a Debian suite name", 'use e.g. "bookworm"')
    return Root(source=source, after_boot=t.choice("after_boot", AfterBoot, AfterBoot.SHELL),
                writable=t.choice("writable", Writable, Writable.TMPFS), path=path,
                suite=suite, packages=tuple(packages))


# (offset, magic) of the filesystems an image root may hold: enough to refuse anything else
# before a loop device is attached.
FS_MAGIC = (("ext4", 1080, b"\x53\xef"), ("xfs", 0, b"XFSB"), ("btrfs", 65600, b"_BHRfS_M"),
            ("squashfs", 0, b"hsqs"))


def filesystem_of(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            head = f.read(65608)
    except OSError:
        return None
    for name, offset, magic in FS_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return name
    return None


def _kernel(t: _Table, root: Root) -> Kernel:
    default = KernelSource.DEBIAN if root.source is RootSource.BUSYBOX else KernelSource.ROOT
    source = t.choice("source", KernelSource, default)
    if source is KernelSource.ROOT and root.source is RootSource.BUSYBOX:
        raise t.error("source", '"root" but the busybox root has no kernel',
                      'use source = "debian"')
    package = t.get("package", str, "linux-image-amd64")
    if not re.match(r"^linux-image-[a-z0-9.+-]+$", package):
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


_LAB_KEYS = ("name", "hypervisor", "uri", "host", "nfs_version", "timeout", "stall", "subnet",
             "root_via")


def _sub(table: _Table, name: str, default: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    if name not in table.data and default is not None:
        return default
    return table.get(name, dict)


def _lab(t: _Table, builder: InitrdBuilder) -> Lab:
    subnet_raw = t.data.get("subnet")
    subnet = None
    if subnet_raw is not None:
        text = t.get("subnet", str)
        try:
            subnet = ipaddress.IPv4Network(text)
        except ValueError:
            raise t.error("subnet", f"{text!r} is not an IPv4 network",
                          'write it like "10.213.7.0/24"') from None
        if subnet.prefixlen != 24 or not subnet.is_private:
            raise t.error("subnet", f"{text!r} is not a private /24",
                          'use a private /24 such as "10.213.7.0/24"')
    hypervisor = t.choice("hypervisor", Hypervisor, Hypervisor.QEMU)
    xen = hypervisor is Hypervisor.XEN
    uri = t.get("uri", str, "xen:///system" if xen else "qemu:///system")
    driver = "xen" if xen else "qemu"
    if not re.match(rf"^{driver}(\+[a-z]+)?://[^\s]*/(system|session)?$", uri):
        raise t.error("uri", f"{uri!r} is not a {driver} libvirt URI (hypervisor = "
                      f'"{hypervisor.value}")', f'use "{driver}:///system" (or '
                      f"{driver}+ssh://user@host/system)")
    if xen and t.data.get("host") == HostMode.ISOLATED.value:
        raise t.error("host", '"isolated" starts a QEMU libvirtd, which cannot run Xen guests',
                      'use host = "system" (the Xen host\'s libvirtd) or leave host out')
    return Lab(
        name=t.name("name", t.get("name", str)),
        hypervisor=hypervisor,
        uri=uri,
        host=t.choice("host", HostMode, HostMode.AUTO),
        nfs_version=_nfs_version(t, builder),
        timeout=t.int_in("timeout", 120, 10, 3600, " s"),
        stall=t.int_in("stall", 45, 5, 3600, " s"),
        subnet=subnet,
        root_via=t.choice("root_via", RootVia, RootVia.CMDLINE),
    )


def _nfs_version(t: _Table, builder: InitrdBuilder) -> NfsVersion:
    # Accept 4 and 4.2 written as TOML numbers too: people will write them that way.
    raw = t.data.get("nfs_version")
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        t = _Table(t.file, t.prefix, {**t.data, "nfs_version": str(raw)}, tuple(t.data))
    default = NfsVersion.V3 if builder is InitrdBuilder.INITRAMFS_TOOLS else NfsVersion.V4_2
    return t.choice("nfs_version", NfsVersion, default)


def _is_xen(top: _Table) -> bool:
    lab = top.data.get("lab")
    return isinstance(lab, dict) and lab.get("hypervisor") == Hypervisor.XEN.value


def _nic_drivers(t: _Table, xen: bool) -> tuple[NicDriver, ...]:
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


_TERMINAL_KEYS = ("name", "boot", "nic", "mac", "memory", "vcpus", "root", "dhcp_root_path",
                  "cmdline", "host")
DHCP_ROOT_RE = re.compile(r"^((nfs|nfs4):)?([0-9.]+:)?/[A-Za-z0-9._/-]*([:,][A-Za-z0-9=.,_-]+)?$")


def _terminals(path: Path, top: _Table, nics: tuple[NicDriver, ...], hypervisor: Hypervisor,
               required: bool = True) -> tuple[Terminal, ...]:
    raw = top.data.get("terminal")
    if raw is None and not required:
        return ()
    if raw is None:
        raise ScenarioError(path, "terminal", "no terminals",
                            'add at least one [[terminal]] table with name = "t1"')
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise ScenarioError(path, "terminal", "must be an array of tables",
                            "write each terminal as a [[terminal]] table")
    terminals: list[Terminal] = []
    seen_names: dict[str, int] = {}
    seen_macs: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = _Table(path, f"terminal[{i}]", item, _TERMINAL_KEYS)
        name = t.name("name", t.get("name", str))
        if name in seen_names:
            raise t.error("name", f"{name!r} is also the name of terminal[{seen_names[name]}]",
                          "give every terminal its own name")
        seen_names[name] = i
        mac = _mac(t, seen_macs, i)
        prefix = MAC_PREFIX[hypervisor]
        if mac is not None and not mac.startswith(prefix):
            raise t.error("mac", f"{mac!r} is outside {hypervisor.value}'s range {prefix}",
                          f'use a MAC that starts with {prefix}, e.g. "{prefix}:12:34:56", '
                          "or leave it out to pin one")
        root = _root_override(t)
        dhcp_root = t.get("dhcp_root_path", str, "") or None
        if dhcp_root is not None and not DHCP_ROOT_RE.match(dhcp_root):
            raise t.error("dhcp_root_path", f"{dhcp_root!r} is not a DHCP root path",
                          'write "/path", "server:/path", "nfs:server:/path:options" '
                          'or "nfs4:server:/path"')
        cmdline = _cmdline(t)
        nic = t.choice("nic", NicDriver, nics[0])
        if nic not in nics:
            raise t.error("nic", f'"{nic.value}" is not in [initrd] nic_drivers',
                          f'add "{nic.value}" to nic_drivers, or use one of them')
        terminals.append(Terminal(
            name=name, boot=t.choice("boot", Boot, Boot.KERNEL), nic=nic, mac=mac,
            memory=t.int_in("memory", 256, 128, 65536, " MiB"),
            vcpus=t.int_in("vcpus", 1, 1, 64),
            root=root, dhcp_root_path=dhcp_root, cmdline=cmdline,
            host=t.get("host", str, "") or None,
        ))
    return tuple(terminals)


def _mac(t: _Table, seen: dict[str, int], index: int, kind: str = "terminal") -> str | None:
    if "mac" not in t.data:
        return None
    mac = t.get("mac", str).lower()
    if not MAC_RE.match(mac):
        raise t.error("mac", f"{mac!r} is not a MAC address",
                      'write six hex pairs, e.g. "52:54:00:12:34:56", or leave it out to pin one')
    if int(mac[:2], 16) & 1:
        raise t.error("mac", f"{mac!r} is a multicast address",
                      'use a unicast MAC such as "52:54:00:12:34:56"')
    if mac in seen:
        raise t.error("mac", f"{mac!r} is also the MAC of {kind}[{seen[mac]}]",
                      "give every terminal its own MAC, or leave it out to pin one")
    seen[mac] = index
    return mac

