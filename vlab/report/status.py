"""`vlab status`: where each terminal runs, its state there and its last verdict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlab import state
from vlab.errors import VirtError
from vlab.nodes import labhost, reach, virt
from vlab.plan.lab import LabPlan, TerminalPlan
from vlab.scenario.model import LOCAL
from vlab.serve import firewall, nfsserver
from vlab.watch.follow import address_from_console
from vlab.watch.judge import OK, failed_units


def terminal_address(t: TerminalPlan) -> str | None:
    """The address a terminal on another node got from its network, as its initrd said."""
    return None if t.node == LOCAL else address_from_console(t.console_log)


def report(plan: LabPlan, conns: Mapping[str, virt.Conn | None]) -> dict[str, Any]:
    """The lab's terminals: where they run, their state there, their last verdict. A node
    missing from conns is down (the local one) or does not answer (another one)."""
    results = state.load(plan.lab_dir, state.RESULTS)
    terminals = []
    for t in plan.terminals:
        r = results.get(t.name, {})
        conn = conns.get(t.node)
        terminals.append({
            "name": t.name,
            "node": t.node,
            "domain": t.domain,
            "mac": t.mac,
            "ip": t.ip or t.ip6 or terminal_address(t) or "",
            "state": virt.domain_state(conn, t.domain) if conn is not None else (
                "absent" if t.node == LOCAL else "unknown"),
            "verdict": r.get("name"),
            "seconds": r.get("seconds"),
            "booted_at": r.get("booted_at"),
            "probes": r.get("probes", []),
            # each [[fault]]'s outcome for it, and the probes run again after them
            "faults": r.get("faults", []),
            "probes_after": r.get("probes_after", []),
            "line": r.get("line"),
            "failed_units": failed_units(r.get("line")),
            "console_log": str(t.console_log),
            "proof": r.get("proof"),
            # [phase, second it began] as the console showed them; the verdict's ends the last
            "phases": r.get("phases", []),
            # the failure's cause where the lab's servers saw it too (cause.py), or None
            "cause": r.get("cause"),
            # what the lab's servers logged about it: DHCP and TFTP lines (cause.py)
            "seen": r.get("seen", []),
        })
    return {"lab": plan.name, "scenario": str(plan.scenario), "terminals": terminals}


def status(plan: LabPlan) -> dict[str, Any]:
    host = labhost.status(plan.netns)
    conn = virt.connect(plan.uri) if host.mode != "down" else None
    conns: dict[str, virt.Conn | None] = {LOCAL: conn}
    unreachable = {}
    for h in plan.busy_nodes:
        if not h.remote:
            continue
        try:
            conns[h.name] = reach.connect(h)
        except VirtError as err:
            unreachable[h.name] = err.detail
    out = report(plan, conns)
    out["lab_host"] = host.describe()
    out["network"] = plan.network if conn and virt.network_active(conn, plan.network) else None
    out["nfs_server_pid"] = nfsserver.pid(plan)
    out["dhcp_server_pid"] = virt.dhcp_server(plan.network) if out["network"] else None
    # when it ended, if something other than vlab stopped it (epoch seconds), else None
    out["nfs_server_ended"] = nfsserver.ended(plan)
    if out["network"] and plan.nfs_netns is not None:
        # without it the lab's servers answer the LAN (firewall.py); vlab up puts it back
        out["firewall"] = "missing" if firewall.missing(plan, host.netns) else "in place"
    if unreachable:
        out["unreachable"] = unreachable
    return out


def all_ok(rep: dict[str, Any]) -> bool:
    return all(t["verdict"] == OK
               and all(c["ok"] for c in [*t.get("probes", []), *t.get("probes_after", [])])
               and all(f["verdict"] == OK for f in t.get("faults", []))
               for t in rep["terminals"])
