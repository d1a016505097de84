"""`vlab down` and `vlab lab-host down`: remove everything a lab created, on every node, from
what its state recorded; safe to run any number of times, and after any failure."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vlab import procs, state
from vlab.build import cache, nfsroot
from vlab.errors import HostError, ShipError, VirtError
from vlab.nodes import labhost, reach, virt
from vlab.plan.lab import Dirs, LabPlan, domain_name
from vlab.progress import Say
from vlab.scenario.model import LOCAL
from vlab.serve import firewall, nfsserver, web


def down(plan: LabPlan, dirs: Dirs, say: Say) -> None:
    """Remove everything the lab created; safe to run any number of times."""
    with state.locked(plan.lab_dir, plan.name):
        recorded = state.load(plan.lab_dir)
        on_node = where_domains_run(plan, recorded)
        left = down_other_nodes(plan, on_node, recorded.get("shipped", []), say)
        destroy_local(plan, recorded, sorted(d for d, n in on_node.items() if n == LOCAL), say)
        remove_local_files(plan, dirs, recorded, say)
        if left:  # the lab stays recorded until its other nodes are clean too
            placement = recorded.get("placement", {})
            state.save(plan.lab_dir, {k: v for k, v in recorded.items()
                                      if k in ("scenario", "lease")}
                       | {"status": "down-incomplete", "shipped": sorted(left),
                          "placement": {t: n for t, n in placement.items() if n in left}})
            raise HostError("; ".join(f"host {h} does not answer ({why}); left there: {what}"
                                      for h, (why, what) in sorted(left.items()))
                            + f"; fix: run vlab down {plan.scenario} again once it answers")
        state.remove(plan.lab_dir)
        stop_host_if_unused(plan, dirs, say)


def where_domains_run(plan: LabPlan, recorded: dict[str, Any]) -> dict[str, str]:
    """domain -> node of every domain the lab may have: its plan's on this machine, and
    what its state recorded (placement is written before a domain is made). Other nodes are
    asked only for what was recorded: a lab never brought up is nobody's business there."""
    placement = recorded.get("placement", {})
    return {**{t.domain: t.node for t in plan.terminals if t.node == LOCAL},
            **{domain_name(plan.name, t): n for t, n in placement.items()}}


def destroy_local(plan: LabPlan, recorded: dict[str, Any], domains: list[str],
                  say: Say) -> None:
    host = labhost.status(plan.netns)
    if host.mode == "down":
        return
    if firewall.unguard(plan, host.netns):
        say(f"removed the firewall rules of lab {plan.name}")
    conn = virt.connect(plan.uri)
    # libvirt waits for each QEMU to exit: destroy them side by side.
    if domains:
        with ThreadPoolExecutor(max_workers=min(virt.CALLS_AT_ONCE, len(domains))) as pool:
            gone = list(pool.map(lambda name: virt.destroy_domain(conn, name), domains))
        for name, destroyed in zip(domains, gone, strict=True):
            if destroyed:
                say(f"destroyed domain {name}")
    if virt.destroy_network(conn, recorded.get("network", plan.network)):
        say(f"destroyed network {plan.network}")


def remove_local_files(plan: LabPlan, dirs: Dirs, recorded: dict[str, Any], say: Say) -> None:
    if nfsserver.pid(plan) is not None:
        say("stopped nfs-ganesha")
    nfsserver.stop(plan)
    if web.stop(plan):
        say("stopped lighttpd")
    for ns in {plan.nfs_netns, recorded.get("nfs_netns")} - {None}:
        if nfsserver.remove_namespace(str(ns)):
            say(f"removed the NFS server's network namespace {ns}")
    if recorded.get("image"):
        for done in nfsroot.release_image(Path(recorded.get("image_file") or recorded["image"]),
                                          Path(recorded["image_mount"]),
                                          recorded.get("image_loop")):
            say(done)
    if nfsserver.stop_rpcbind_if_unused(dirs.state):
        say("stopped rpcbind")
    shutil.rmtree(plan.kernel_path.parent, ignore_errors=True)
    shutil.rmtree(plan.tftp_dir, ignore_errors=True)
    shutil.rmtree(plan.lab_dir / "nvram", ignore_errors=True)  # UEFI guests' variable stores
    (plan.lab_dir / "exports").unlink(missing_ok=True)
    for path in cache.sweep(dirs.cache):
        say(f"removed {path} (half-built by a vlab that was killed)")


def down_other_nodes(plan: LabPlan, on_node: dict[str, str], shipped: list[str],
                     say: Say) -> dict[str, tuple[str, str]]:
    """Destroy the lab's domains on its other nodes and remove the files shipped there.
    Returns what is left on each node that did not answer: (why, what)."""
    left: dict[str, tuple[str, str]] = {}
    for h in plan.nodes:
        if not h.remote:
            continue
        domains = sorted(d for d, name in on_node.items() if name == h.name)
        if not domains and h.name not in shipped:
            continue
        try:
            conn = reach.connect(h)
            for name in domains:
                if virt.destroy_domain(conn, name):
                    say(f"destroyed domain {name} on {h.name}")
            conn.close()
            with reach.session(h) as session:
                if session.remove_shipped(str(h.files_dir),
                                          [h.kernel_path.name, h.initrd_path.name]):
                    say(f"removed {h.files_dir} on {h.name}")
        except (VirtError, ShipError) as err:
            what = ", ".join([*(f"domain {d}" for d in domains), f"folder {h.files_dir}"])
            say(f"host {h.name} does not answer: left there: {what}")
            left[h.name] = (err.detail if isinstance(err, VirtError) else str(err), what)
    return left


def stop_host_if_unused(plan: LabPlan, dirs: Dirs, say: Say) -> None:
    """The isolated lab host that `up` started on demand goes when no lab uses it any more."""
    with state.all_labs_locked(dirs.state):  # not while another lab is coming up
        if not state.load(dirs.state, state.HOST_FILE).get("on_demand"):
            return
        if any((dirs.state / "labs").glob(f"*/{state.STATE}")):
            return  # another lab is up, or on its way up (its lease is recorded first)
        host = labhost.status(plan.netns)
        if host.mode == "isolated":
            domains, networks = virt.names(virt.connect(plan.uri), "vlab-")
            if domains or networks:
                return
        if host.mode != "system":
            lab_host_down(plan.netns, dirs, say)


def lab_host_down(netns: str, dirs: Dirs, say: Say) -> None:
    if labhost.status(netns).mode == "isolated" or labhost.netns_exists(netns):
        say(f"stopping the isolated lab host (namespace {netns})")
    labhost.stop(netns)
    state.remove(dirs.state, state.HOST_FILE)


def everything_down(netns: str, dirs: Dirs, say: Say) -> None:
    """`vlab lab-host down`: every lab's terminals, networks and NFS servers, then the host."""
    if labhost.status(netns).mode == "isolated":
        conn = virt.connect("qemu:///system")
        domains, networks = virt.names(conn, "vlab-")
        for name in domains:
            virt.destroy_domain(conn, name)
            say(f"destroyed domain {name}")
        for name in networks:
            virt.destroy_network(conn, name)
            say(f"destroyed network {name}")
    for pid_file in nfsserver.pid_files(dirs.state):
        pid = nfsserver.server_pid(pid_file)
        if pid is not None:
            procs.stop(pid)
            say(f"stopped nfs-ganesha of lab {pid_file.parent.parent.name}")
    for ns in nfsserver.namespaces():  # with each lab's own rpcbind in it
        nfsserver.remove_namespace(ns)
        say(f"removed network namespace {ns}")
    if nfsserver.stop_rpcbind_if_unused(dirs.state):
        say("stopped rpcbind")
    lab_host_down(netns, dirs, say)
