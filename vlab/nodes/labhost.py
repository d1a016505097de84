"""The lab host: the libvirtd that runs the terminals.

`system` is a libvirtd the machine already runs (a developer workstation). `isolated` is one
vlab starts itself inside its own network namespace, together with virtlogd; everything it
spawns (the lab network's bridge, dnsmasq, the guests' taps) stays in that namespace, and so
does the NFS server, so nothing touches the machine's own network.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from vlab import procs, run
from vlab.errors import HostError, MissingTool
from vlab.scenario.model import LabHostMode

LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")
LIBVIRTD_PID = Path("/run/libvirtd.pid")
VIRTLOGD_PID = Path("/run/virtlogd.pid")
NETNS_DIR = Path("/run/netns")
KVM = Path("/dev/kvm")
VLAB_LINK_PREFIX = "vlab"  # lab bridges (vlab<hex>) and NFS veths

TOOLS = {
    "libvirtd": "libvirt-daemon-system libvirt-daemon-system-sysv",
    "virtlogd": "libvirt-daemon-system libvirt-daemon-system-sysv",
    "qemu-system-x86_64": "qemu-system-x86",
    "dnsmasq": "dnsmasq-base",
    "ip": "iproute2",
    "iptables": "iptables",
    "tini": "tini",
}


@dataclass(frozen=True)
class HostStatus:
    mode: str  # "isolated", "system" or "down"
    libvirtd_pid: int | None
    netns: str | None

    def describe(self) -> str:
        if self.mode == "down":
            return "lab host: down (no libvirtd answers)"
        where = f"in network namespace {self.netns}" if self.netns else "in the machine's namespace"
        return f"lab host: {self.mode}, libvirtd pid {self.libvirtd_pid} {where}"

    def why(self) -> str:
        """Why vlab uses this libvirtd, and what it does there (`vlab lab-host status`)."""
        sock = str(LIBVIRT_SOCK)
        if self.mode == "down":
            return (f"no libvirtd answers on {sock}: vlab up starts an isolated one "
                    "(host = \"auto\" or \"isolated\"); host = \"system\" needs yours started")
        if self.mode == "isolated":
            return (f"vlab started it, as no libvirtd answered on {sock}; its networks, "
                    f"guests and their dnsmasq stay in namespace {self.netns}, away from this "
                    "machine's own networks; vlab lab-host down stops it (vlab down does, with "
                    "the last lab it started it for)")
        return (f"a libvirtd vlab did not start answers on {sock} (a workstation's: "
                "host = \"auto\" and \"system\" use it); vlab adds only its labs' networks "
                "(vlab-LAB, bridges vlab<hex>), guests (vlab-LAB-NAME) and one firewall rule "
                "per lab, each NFS server in a namespace of its own, and vlab down removes "
                "them; its other networks and guests are not touched")


def libvirtd_answers() -> bool:
    return procs.socket_answers(LIBVIRT_SOCK)


CLONE_NEWNET = 0x40000000


R = TypeVar("R")


def in_netns(netns: str | None, action: Callable[[], R]) -> R:
    """Run action in a thread that entered a network namespace (setns is per thread).

    What it opens there stays there: a socket keeps its namespace, and a program it starts
    (libvirt's ssh for a qemu+ssh:// URI) runs in it; vlab itself stays in its own."""
    if netns is None:
        return action()
    result: list[R] = []
    failure: list[BaseException] = []

    def inside() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(NETNS_DIR / netns) as ns:
                if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns}")
            result.append(action())
        except BaseException as err:  # handed to the caller's thread
            failure.append(err)

    worker = threading.Thread(target=inside)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]


def connect_tcp(netns: str | None, ip: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection made from inside a namespace: the lab host's, where the terminals are."""
    return in_netns(netns, lambda: socket.create_connection((ip, port), timeout=timeout))


def machine_networks() -> frozenset[str]:
    """The IPv4 networks this machine routes in its own namespace (where a system libvirtd
    makes lab bridges), but vlab's own bridges and veths: a new lab steers clear of them."""
    found = run.run(["ip", "-j", "-4", "route", "show"], check=False)
    try:
        routes = json.loads(found.stdout or "[]")
    except ValueError:
        return frozenset()
    nets = set()
    for r in routes if isinstance(routes, list) else []:
        dst, dev = str(r.get("dst", "")), str(r.get("dev", ""))
        if dst == "default" or dev.startswith(VLAB_LINK_PREFIX):
            continue
        try:
            net = ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            continue
        if net.prefixlen and not net.is_loopback:
            nets.add(str(net))
    return frozenset(nets)


def netns_exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def _in_netns(pid: int, netns: str) -> bool:
    try:
        inode = os.stat(NETNS_DIR / netns).st_ino
    except OSError:
        return False
    return procs.netns_of(pid) == f"net:[{inode}]"


def status(netns: str) -> HostStatus:
    pid = procs.read_pid(LIBVIRTD_PID, "libvirtd")
    if not libvirtd_answers():
        return HostStatus("down", None, None)
    if pid is not None and _in_netns(pid, netns):
        return HostStatus("isolated", pid, netns)
    return HostStatus("system", pid, None)


def ensure(mode: LabHostMode, netns: str, log_dir: Path) -> HostStatus:
    """Make sure a libvirtd of the asked-for kind answers; start the isolated one if needed."""
    current = status(netns)
    if mode is LabHostMode.SYSTEM and current.mode != "system":
        raise HostError(
            "lab_host = \"system\" but no system libvirtd answers on " + str(LIBVIRT_SOCK)
            + ("" if current.mode == "down" else " (the one running is vlab's isolated host)")
            + "; fix: start libvirtd, or use lab_host = \"auto\" in [lab] to let vlab start "
            "an isolated one"
        )
    if mode is LabHostMode.ISOLATED and current.mode == "system":
        raise HostError(
            "lab_host = \"isolated\" but a system libvirtd already runs (only one libvirtd fits "
            "on a machine); fix: use lab_host = \"system\" or \"auto\", or stop that libvirtd"
        )
    if current.mode != "down":
        return current
    return start(netns, log_dir)


def _check_tools() -> None:
    for tool, package in TOOLS.items():
        if run.which(tool) is None:
            raise MissingTool(f"{tool}", package)


def _fix_kvm_permissions() -> None:
    # Without udev, /dev/kvm is root-only; libvirtd then re-probes QEMU on every start
    # (about 48 s per domain). udev would give it group kvm, mode 0660.
    if not KVM.exists():
        return
    st = KVM.stat()
    if stat.S_IMODE(st.st_mode) & 0o060 != 0o060:
        try:
            import grp

            os.chown(KVM, -1, grp.getgrnam("kvm").gr_gid)
            KVM.chmod(0o660)
        except (KeyError, OSError):
            pass


def start(netns: str, log_dir: Path) -> HostStatus:
    _check_tools()
    if not netns_exists(netns):
        run.run(["ip", "netns", "add", netns])
    run.run(["ip", "-n", netns, "link", "set", "lo", "up"])
    _fix_kvm_permissions()
    if procs.read_pid(VIRTLOGD_PID, "virtlogd") is None:
        run.daemon(["virtlogd", "-d"], netns=netns, log_file=log_dir / "virtlogd.log")
    # libvirtd daemonizes each QEMU, so a QEMU that exits is an orphan's zombie, and libvirt's
    # destroy waits until it is reaped. Where pid 1 reaps late (this machine kind's every ~2 s,
    # in a container often never), that is 1.6-2.3 s per domain; under tini -s (a subreaper,
    # libvirtd in its foreground) it is at once.
    reaper = run.spawn(["tini", "-s", "--", "libvirtd"], netns=netns,
                       log_file=log_dir / "libvirtd.log")
    deadline = time.monotonic() + 60
    while not libvirtd_answers():
        if not procs.alive(reaper):
            raise HostError(f"libvirtd exited at start; see {log_dir}/libvirtd.log")
        if time.monotonic() > deadline:
            raise HostError(f"libvirtd did not answer within 60 s; see {log_dir}/libvirtd.log")
        time.sleep(0.1)
    return status(netns)


def stop(netns: str) -> None:
    """Stop the isolated libvirtd and virtlogd and remove the namespace (guests first!)."""
    for pid_file, program in ((LIBVIRTD_PID, "libvirtd"), (VIRTLOGD_PID, "virtlogd")):
        pid = procs.read_pid(pid_file, program)
        if pid is not None and _in_netns(pid, netns):
            procs.stop(pid)
    if netns_exists(netns):
        run.run(["ip", "netns", "del", netns])


def free_memory_mib() -> int:
    """This machine's free memory, as libvirt reports a host's (MemFree), for placement."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemFree:"):
            return int(line.split()[1]) // 1024
    return 0
