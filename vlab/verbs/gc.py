"""`vlab gc`: remove what carries vlab's label but belongs to no lab with state."""

from __future__ import annotations

from vlab import procs, state
from vlab.artifacts import templates
from vlab.build import cache, mounts
from vlab.nodes import labhost, virt
from vlab.plan.lab import NETNS, NFS_NETNS_PREFIX, Dirs
from vlab.progress import Say
from vlab.serve import nfsserver, web
from vlab.verbs.down import lab_host_down


def gc(dirs: Dirs, say: Say) -> list[str]:
    """A lab's state goes only with `vlab down`; what outlives it (state deleted by hand, a
    state folder wiped) is found by its labels: domains by their vlab metadata, networks by
    their vlab- name, NFS and web servers by their lab folder in their command line, mounts by their
    place in a lab folder."""
    labs = dirs.state / "labs"
    live = {p.parent.name for p in labs.glob(f"*/{state.STATE}")}
    removed: list[str] = []

    def orphan(lab_name: str) -> bool:
        return lab_name not in live

    if labhost.status(NETNS).mode != "down":
        conn = virt.connect("qemu:///system")
        for name, owner in sorted(virt.labelled_domains(conn, templates.METADATA_NS).items()):
            if orphan(owner) and virt.destroy_domain(conn, name):
                removed.append(f"domain {name} (lab {owner})")
        for name in virt.lab_networks(conn):
            if orphan(name.removeprefix("vlab-")) and virt.destroy_network(conn, name):
                removed.append(f"network {name}")
    for program in (nfsserver.GANESHA, web.LIGHTTPD):
        for pid, cmd in sorted(procs.with_argument(str(labs) + "/", program).items()):
            owner = cmd.split(str(labs) + "/", 1)[1].split("/", 1)[0]
            if orphan(owner):
                procs.stop(pid)
                removed.append(f"process {pid} (lab {owner}): {cmd}")
    for ns in nfsserver.namespaces():  # with the lab's rpcbind, and anything else in it
        if (orphan(ns.removeprefix(NFS_NETNS_PREFIX))
                and not nfsserver.of_another_state(ns, labs)
                and nfsserver.remove_namespace(ns)):
            removed.append(f"network namespace {ns}")
    for point in mounts.mounted_under(labs):
        owner = point.relative_to(labs.resolve()).parts[0]
        if orphan(owner):
            mounts.umount(point)
            removed.append(f"mount {point}")
    if nfsserver.stop_rpcbind_if_unused(dirs.state):
        removed.append("rpcbind")
    removed += [f"half-built {p}" for p in cache.sweep(dirs.cache)]
    if not live and state.load(dirs.state, state.HOST_FILE).get("on_demand"):
        lab_host_down(NETNS, dirs, say)
    for what in removed:
        say(f"removed {what}")
    return removed
