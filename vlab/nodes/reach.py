"""Reaching the lab's nodes: libvirt connections and SSH sessions, each opened from the
namespace the node is reached from; and the checks of the outside world before a lab is built."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from vlab.errors import ScenarioError, VirtError
from vlab.nodes import labhost, virt
from vlab.plan.lab import NodePlan
from vlab.scenario.model import LOCAL, Scenario

if TYPE_CHECKING:  # vlab.ship loads paramiko, only needed where another host is reached
    from vlab.nodes import ship


def connect_uri(uri: str, netns: str | None) -> virt.Conn:
    """A libvirt connection; to a node reached from a namespace, opened from inside it."""
    return virt.connect(uri, lambda opening: labhost.in_netns(netns, opening))


def connect(node: NodePlan) -> virt.Conn:
    return connect_uri(node.uri, node.netns)


def ship_session(name: str, uri: str, netns: str | None) -> ship.Remote:
    """An SSH session to a node, its host key checked against known_hosts."""
    from vlab.nodes import ship

    return ship.Remote(name, uri, lambda address, port: labhost.connect_tcp(netns, address, port))


def session(node: NodePlan) -> ship.Remote:
    return ship_session(node.name, node.uri, node.netns)


def preflight(sc: Scenario) -> dict[str, int]:
    """Checks that need the outside world, done before anything is created (exit 2); returns
    the free memory of each node, for placing terminals."""
    uri = sc.lab.uri
    if re.match(r"^\w+(\+\w+)?://[^/]", uri):  # a remote lab host the scenario names
        why = virt.refuses(uri)
        if why is not None:
            raise ScenarioError(sc.path, "lab.uri", f"{uri!r} does not answer ({why})",
                                "check that the host is up and libvirtd listens there, or leave "
                                "uri out to use this machine")
    if not sc.nodes:
        return {}
    free = {LOCAL: labhost.free_memory_mib()}
    for i, h in enumerate(sc.nodes):
        if h.netns is not None and not labhost.netns_exists(h.netns):
            raise ScenarioError(sc.path, f"node[{i}].netns", f"{h.netns!r}: no such "
                                "network namespace", "create it, or leave netns out")
        ship_session(h.name, h.uri, h.netns).close()  # its SSH host key is known
        try:
            conn = connect_uri(h.uri, h.netns)
        except VirtError as err:
            raise ScenarioError(sc.path, f"node[{i}].uri", f"{h.uri!r} does not "
                                f"answer ({err.detail})", "check that libvirtd runs there and "
                                "that this user may use it over SSH") from None
        try:
            free[h.name] = virt.free_memory_mib(conn)
            if h.network is not None and not virt.network_active(conn, h.network):
                raise ScenarioError(sc.path, f"node[{i}].network", f"{h.network!r} is "
                                    f"not an active libvirt network on {h.name}",
                                    f"start it there (virsh -c {h.uri} net-start {h.network}), "
                                    "or name one that virsh net-list shows")
        finally:
            conn.close()
    return free
