"""A lab's lease: its subnet, NFS port, bridge and pinned MACs, derived from its name and
re-derived past what the other labs on this machine hold. Pure."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from vlab.errors import ScenarioError
from vlab.plan.cmdline import MOUNT_PORT_OFFSET
from vlab.scenario.model import MAC_PREFIX, Hypervisor, Lab, Scenario

KVM_MAC_PREFIX = MAC_PREFIX[Hypervisor.QEMU]
NFS_PORT_BASE = 20490


def digest(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


def pinned_mac(lab: str, terminal: str, attempt: int = 0, prefix: str = KVM_MAC_PREFIX) -> str:
    """A MAC in QEMU's 52:54:00 range (or Xen's 00:16:3e), from lab and terminal name only."""
    d = digest("mac", lab, terminal, str(attempt))
    return prefix + "".join(f":{b:02x}" for b in d[:3])


# Locally administered ("02"), "vl": the NFS server's end of its veth pair, which no
# hypervisor hands out.
SERVER_MAC_PREFIX = "02:76:6c"


def server_mac(lab: str) -> str:
    """The lab's NFS server's MAC, from the lab name only: a server started again (after a
    crash, or a fault) answers at the MAC the terminals' neighbour caches hold. A new MAC
    left them sending to the old one until the entry went stale: ~60 s without NFS."""
    return SERVER_MAC_PREFIX + "".join(f":{b:02x}" for b in digest("nfs-mac", lab)[:3])


def lab_subnet(lab: str, attempt: int = 0) -> ipaddress.IPv4Network:
    """A private /24 derived from the lab name, inside the lab host's own namespace."""
    octet = 1 + digest("subnet", lab, *_again(attempt))[0] % 250
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
    domains: frozenset[str] = frozenset()  # libvirt domain names
    by: dict[str, str] = field(default_factory=dict, compare=False)  # resource -> lab
    # Networks the machine already routes that are not vlab's (a workstation's libvirt
    # `default` network, its LAN, a VPN): a lab's subnet must not overlap them.
    routed: frozenset[str] = frozenset()

    def holds(self, subnet: str, nfs_port: int, bridge: str) -> bool:
        return (subnet in self.subnets or bridge in self.bridges or bool(self.routes(subnet))
                or bool({nfs_port, nfs_port + MOUNT_PORT_OFFSET} & self.ports))

    def routes(self, subnet: str) -> str | None:
        """The machine's network that overlaps subnet, if one does."""
        net = ipaddress.IPv4Network(subnet)
        return next((r for r in sorted(self.routed) if ipaddress.IPv4Network(r).overlaps(net)),
                    None)


NO_OTHER_LABS = Taken()
MAX_ATTEMPTS = 200


Lease = tuple[int, ipaddress.IPv4Network, int, str]  # attempt, subnet, NFS port, bridge


def lease(lab: Lab, path: Path, taken: Taken, attempt: int | None) -> Lease:
    """The lab's subnet, NFS port and bridge: from its name, re-derived past other labs'."""
    def derive(n: int) -> tuple[ipaddress.IPv4Network, int, str]:
        port = NFS_PORT_BASE + int.from_bytes(digest("port", lab.name, *_again(n))[:2]) % 1000
        bridge = "vlab" + digest("bridge", lab.name, *_again(n)).hex()[:8]
        return lab.subnet or lab_subnet(lab.name, n), port, bridge

    if attempt is not None:  # recorded when the lab came up: keep it while it lives
        return (attempt, *derive(attempt))
    if lab.subnet is not None and str(lab.subnet) in taken.subnets:
        raise ScenarioError(path, "lab.subnet", f"'{lab.subnet}' is the subnet of lab "
                            f"{taken.by.get(str(lab.subnet), '?')!r}, which is up",
                            "choose another subnet, or leave subnet out to get a free one")
    if lab.subnet is not None and (route := taken.routes(str(lab.subnet))):
        raise ScenarioError(path, "lab.subnet", f"'{lab.subnet}' overlaps {route}, a network "
                            "this machine already has", "choose another subnet, or leave "
                            "subnet out to get a free one")
    for n in range(MAX_ATTEMPTS):
        subnet, port, bridge = derive(n)
        if not taken.holds(str(subnet), port, bridge):
            return n, subnet, port, bridge
    raise ScenarioError(path, "lab.name", f"{lab.name!r}: no free subnet and NFS port "
                        f"after {MAX_ATTEMPTS} tries ({len(taken.subnets)} labs are up)",
                        "take some labs down (vlab down) first")


def pinned_macs(scenario: Scenario, others: frozenset[str] = frozenset()) -> dict[str, str]:
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
