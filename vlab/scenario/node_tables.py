"""`[[node]]` tables: the other nodes (hypervisor hosts) a lab's terminals run on,
and where the scenario places its terminals among them."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from vlab.errors import ScenarioError
from vlab.scenario.model import (
    LOCAL,
    SHIP_DIR,
    SYSTEM_DIRS,
    Arch,
    Boot,
    Firmware,
    Hypervisor,
    Lab,
    Node,
    RootVia,
    Terminal,
)
from vlab.scenario.table import Table

KEYS = ("name", "uri", "capacity", "network", "bridge", "nfs_server", "clients", "netns",
        "files")
SSH_URI_RE = re.compile(r"^(qemu|xen)\+ssh://([^@/?\s]+@)?([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(:\d+)?"
                        r"/system(\?\S*)?$")
# The one libvirt URI parameter vlab allows: others run programs (command=, netcat=), turn off
# host-key checks (no_verify=) or reach other sockets (socket=).
URI_PARAMS = ("keyfile",)
KEYFILE_RE = re.compile(r"/[A-Za-z0-9._/-]+")


def check_uri_query(t: Table, key: str, uri: str) -> None:
    """Refuse a libvirt URI whose query string carries anything but keyfile=/abs/path."""
    _base, sep, query = uri.partition("?")
    if not sep:
        return
    for pair in query.split("&"):
        name, _eq, value = pair.partition("=")
        if name not in URI_PARAMS:
            raise t.error(key, f"{uri!r} has the parameter {name!r}, which vlab does not allow "
                          "(it would run a program, skip the host-key check or reach another "
                          "socket)", "leave only ?keyfile=/path/to/key, or no query at all")
        if not KEYFILE_RE.fullmatch(value) or ".." in value.split("/"):
            raise t.error(key, f"{uri!r}: keyfile {value!r} is not an absolute file path",
                          "write ?keyfile=/root/.ssh/id_ed25519")


def nodes(top: Table, lab: Lab) -> tuple[Node, ...]:
    raw = top.tables("node", "write each other hypervisor host as a [[node]] table")
    if raw and lab.root_via is RootVia.DHCP:
        raise top.error("lab.root_via", '"dhcp" hands out the root from the lab\'s own DHCP '
                        "server, which terminals on other nodes do not reach",
                        'use root_via = "cmdline" with [[node]] tables')
    found: list[Node] = []
    names: dict[str, int] = {}
    for i, item in enumerate(raw):
        t = Table(top.file, f"node[{i}]", item, KEYS)
        name = t.name("name", t.get("name", str))
        if name == LOCAL or name in names:
            raise t.error("name", f"{name!r} is also the name of " + (
                "the lab host" if name == LOCAL else f"node[{names[name]}]"),
                "give every host its own name")
        names[name] = i
        found.append(_node(t, name, lab.hypervisor))
    return tuple(found)


def _node(t: Table, name: str, hypervisor: Hypervisor) -> Node:
    uri = t.get("uri", str)
    driver = "xen" if hypervisor is Hypervisor.XEN else "qemu"
    parts = SSH_URI_RE.fullmatch(uri)
    if not parts or parts.group(1) != driver:
        raise t.error("uri", f"{uri!r} is not a {driver}+ssh:// URI of another host "
                      f'(the lab\'s hypervisor is "{hypervisor.value}")',
                      f'write it like "{driver}+ssh://root@host.example/system" (vlab ships '
                      "the kernel and initrd over the same SSH; the lab host is [lab] uri)")
    check_uri_query(t, "uri", uri)
    port = parts.group(4)
    if port is not None and not 0 < int(port[1:]) < 65536:
        raise t.error("uri", f"{uri!r} names port {port[1:]}, which no host listens on",
                      "give the SSH port, 1 to 65535, or leave it out for 22")
    how = ("a libvirt network or bridge name", "give the name as virsh net-list or ip link "
           "shows it")
    network, bridge = t.iface_name("network", *how), t.iface_name("bridge", *how)
    if network is None and bridge is None:
        raise t.error("network", "is missing: its terminals join a network that is there "
                      "already", 'add network = "default" (a libvirt network on that host) '
                      'or bridge = "br0" (a bridge there on the terminals\' LAN)')
    if network is not None and bridge is not None:
        raise t.error("bridge", "is given with network: its terminals join one of them",
                      "keep network (a libvirt network) or bridge, not both")
    if "nfs_server" not in t.data:
        raise t.error("nfs_server", "is missing", "add the address at which its terminals "
                      'reach the NFS server, e.g. nfs_server = "10.0.0.1"')
    nfs_server = t.ip("nfs_server")
    assert nfs_server is not None
    clients = t.network("clients", 'give the subnet its terminals\' addresses come from, e.g. '
                        '"10.0.1.0/24"') if "clients" in t.data else None
    if clients is not None and (not clients.is_private or clients.prefixlen < 8):
        raise t.error("clients", f"{str(clients)!r} would open the lab's NFS export (read by "
                      "root, no root squash) to public or all addresses",
                      "give the private subnet its terminals' addresses come from, e.g. "
                      '"10.0.1.0/24"')
    netns = t.iface_name("netns", "a network namespace name",
                         "give a name as ip netns list shows it, or leave netns out")
    files = t.get("files", str, SHIP_DIR)
    if not re.fullmatch(r"^/[A-Za-z0-9._/-]+$", files) or ".." in files.split("/"):
        raise t.error("files", f"{files!r} is not an absolute folder path",
                      f'give a folder vlab owns there, e.g. "{SHIP_DIR}"')
    if Path(files.rstrip("/") or "/") in SYSTEM_DIRS:
        raise t.error("files", f"{files!r} is a system folder of that host",
                      f'give a folder vlab owns there, e.g. "{SHIP_DIR}" (vlab makes a folder '
                      "per lab in it, and removes only what it shipped)")
    return Node(name=name, uri=uri, network=network, bridge=bridge, nfs_server=nfs_server,
                capacity=t.int_in("capacity", 1000, 1, 1000) if "capacity" in t.data else None,
                clients=clients, netns=netns, files=files.rstrip("/") or "/")


def check_placement(path: Path, lab: Lab, terminals: tuple[Terminal, ...],
                    found: tuple[Node, ...]) -> None:
    known = {LOCAL, *(h.name for h in found)}
    placed: dict[str, int] = {}
    for i, t in enumerate(terminals):
        if t.node is None:
            continue
        key = f"terminal[{i}].node"
        if t.node not in known:
            close = difflib.get_close_matches(t.node, sorted(known), n=1)
            raise ScenarioError(path, key, f"{t.node!r} is not a node of this lab",
                                f"did you mean '{close[0]}'?" if close else "use one of "
                                + ", ".join(f'"{k}"' for k in sorted(known))
                                + " ([[node]] names, or the lab's own)")
        if t.node != LOCAL and t.boot is Boot.PXE:
            raise ScenarioError(path, key, f"{t.node!r}: a PXE terminal boots from the lab's "
                                "own network (its TFTP tree)", 'leave node out, or use boot = '
                                '"kernel"')
        if t.node != LOCAL and t.arch is not Arch.AMD64:
            raise ScenarioError(path, key, f"{t.node!r}: an {t.arch.value} terminal runs on "
                                "the lab host (vlab checks for qemu-system-aarch64 and its "
                                "firmware there only)", "leave node out, or leave arch out")
        if t.node != LOCAL and t.firmware is not Firmware.BIOS:
            raise ScenarioError(path, key, f"{t.node!r}: a UEFI terminal runs on the lab "
                                "host (OVMF and its variable store are there)",
                                'leave node out, or leave firmware out')
        if t.node == LOCAL and found and lab.hypervisor is Hypervisor.XEN:
            raise ScenarioError(path, key, '"local": the lab host of a Xen lab with [[node]]s '
                                "runs QEMU, and serves the Xen hosts' terminals their network "
                                "and root", "leave node out, or name one of the Xen [[node]]s")
        placed[t.node] = placed.get(t.node, 0) + 1
    for i, h in enumerate(found):
        if h.capacity is not None and placed.get(h.name, 0) > h.capacity:
            raise ScenarioError(path, f"node[{i}].capacity", f"{h.capacity}, but "
                                f"{placed[h.name]} terminals name node {h.name!r}",
                                "raise capacity, or put some terminals on other nodes")
