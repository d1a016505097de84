"""A lab's consoles watched at once, each to its verdict (follow.py and judge.py): which line
says the root's init is up, the progress board, libvirt's lifecycle events, and then what the
lab's servers saw of each terminal (cause.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from vlab import progress
from vlab.build import mounts
from vlab.nodes import virt
from vlab.plan.lab import LabPlan, TerminalPlan
from vlab.progress import Say
from vlab.report.status import terminal_address
from vlab.scenario.model import (
    LOCAL,
    Hypervisor,
    RootSource,
)
from vlab.serve import nfsserver, web
from vlab.watch import cause
from vlab.watch.follow import watch
from vlab.watch.guesttext import READY_MARKER, Pattern, tail
from vlab.watch.judge import (
    READY_BUSYBOX,
    READY_SYSTEMD,
    STALLED,
    SYSTEMD_REACHED,
    Verdict,
    failed_units,
    shared_client_ids,
)

MOUNTED = "nfs-mounted"  # the phase the [[fault]]s made during the boot wait for

# A root whose init vlab cannot recognise is ok once it has run this long after the proof.
SETTLE_SECONDS = 5.0


def watch_consoles(plan: LabPlan, conns: dict[str, virt.Conn],
                   started: dict[TerminalPlan, float], say: Say,
                   tftp_dir: Path | None = None,
                   on_mounted: Callable[[], None] | None = None) -> dict[TerminalPlan, Verdict]:
    """Every terminal's verdict; on_mounted() is called once, as soon as every console
    showed its NFS root mounted or its verdict (the [[fault]]s made during the boot)."""
    ready = ready_line(plan)
    mounted: set[str] = set()
    mounted_lock = threading.Lock()

    def reached(t: TerminalPlan) -> None:
        with mounted_lock:
            if on_mounted is None or t.name in mounted:
                return
            mounted.add(t.name)
            if len(mounted) == len(started):
                on_mounted()

    def phase(t: TerminalPlan, name: str) -> None:
        board.set(t.name, name)
        if name == MOUNTED:
            reached(t)

    say(f"watching {len(started)} console(s) for the NFS root (timeout {plan.timeout} s)")
    stall = min(plan.stall, plan.timeout)

    stop = threading.Event()
    board = progress.Board([t.name for t in started])
    # A death is told by libvirt's lifecycle events at once; the state is polled as well.
    deaths = {node: virt.Deaths(conn) for node, conn in conns.items()}
    polled = {node: virt.Polled(conn, [t.domain for t in started if t.node == node])
              for node, conn in conns.items()}

    def one(t: TerminalPlan) -> Verdict:
        d, p = deaths[t.node], polled[t.node]
        v = watch(t.console_log, started=started[t], timeout=plan.timeout, stall=stall,
                  ready=ready, settle=SETTLE_SECONDS, stop=stop,
                  almost=SYSTEMD_REACHED if ready is READY_SYSTEMD else None,
                  on_phase=lambda name: phase(t, name),
                  cpu=lambda: p.cpu(t.domain), state=lambda: p.state(t.domain),
                  died=(lambda: d.of(t.domain)) if d.live else None,
                  stamps=t.console_log.with_suffix(".times"))
        board.done(t.name, v.name, v.seconds)
        reached(t)
        return v

    pool = ThreadPoolExecutor(max_workers=len(started))
    try:
        with board:
            for t, at in started.items():
                board.booted(t.name, at)
            verdicts = dict(zip(started, pool.map(one, started), strict=True))
    finally:
        stop.set()  # on Ctrl-C, the watchers stop at their next poll
        pool.shutdown(wait=True)
        for d in deaths.values():
            d.close()
        for p in polled.values():
            p.close()
    # The causes once, while the lab's servers are as the boots left them.
    verdicts = servers_side(plan, verdicts, tftp_dir)
    say_verdicts(plan, verdicts, stall, say)
    return verdicts


def say_verdicts(plan: LabPlan, verdicts: dict[TerminalPlan, Verdict], stall: float,
                 say: Say) -> None:
    for t, v in verdicts.items():
        if not v.ok:
            say(f"{t.name}: {v.name}: {v.line}")
            if v.cause is not None:
                say(f"{t.name}: cause: {v.cause}")
        elif units := failed_units(v.line):
            say(f"{t.name}: up, but these systemd units of the root failed: {', '.join(units)} "
                f"(vlab ssh ... {t.name} -- systemctl status UNIT)")
        if v.name == STALLED and plan.hypervisor is Hypervisor.KVM:
            say(f"{t.name}: no console output for {stall:.0f} s under KVM; if this machine "
                'cannot run KVM guests, set hypervisor = "qemu" in [lab]')
    for client, names in shared_client_ids({t.name: v for t, v in verdicts.items()}).items():
        say(f"{', '.join(names)}: one NFSv4 client id ({client}), so the server takes them "
            "for one client and their mounts can fail; give each its own "
            "nfs.nfs4_unique_id= (vlab sets one from the MAC unless a cmdline sets another)")


def servers_side(plan: LabPlan, verdicts: dict[TerminalPlan, Verdict],
                 tftp_dir: Path | None = None) -> dict[TerminalPlan, Verdict]:
    """Each verdict with what the lab's servers saw of its terminal (its DHCP and TFTP
    lines) and, for a failure the servers saw too, its cause (cause.py)."""
    log, web_log = (log_text(path) for path in (plan.dnsmasq_log, web.access_log(plan)))
    lab = cause.Facts(export_path=str(plan.export_path),
                      nfs_clients=(*map(str, plan.nfs_clients),
                                   *([plan.ipv6_subnet] if plan.ipv6 else [])),
                      nfs_running=nfsserver.pid(plan) is not None, dhcp=True, dnsmasq_log=log,
                      tftp_dir=str(tftp_dir or ""), web_log=web_log)
    out = {}
    for t, v in verdicts.items():
        facts = replace(lab, dhcp=t.node == LOCAL)
        ip = t.ip or t.ip6 or terminal_address(t) or ""
        seen = cause.seen_by_servers(t.mac, ip, log) if facts.dhcp else ()
        why = None if v.ok else cause.explain(v.name, {"mac": t.mac, "ip": ip, "line": v.line},
                                                facts)
        out[t] = replace(v, cause=why, seen=seen)
    return out


def log_text(log: Path) -> str:
    """A server's log, its last 4 MiB ("" if there is none)."""
    try:
        return tail(log, 4 << 20).decode(errors="replace")
    except OSError:
        return ""


def ready_line(plan: LabPlan) -> Pattern | None:
    """What the root's own init prints once the terminal is up, by what its init is."""
    if plan.root_source is RootSource.BUSYBOX:
        return READY_BUSYBOX
    # inside() follows the root's own symlinks (/sbin/init -> /lib/systemd/systemd).
    init = mounts.inside(plan.export_path, "sbin/init")
    if init is None:
        return None
    if init.name == "systemd":
        return READY_SYSTEMD
    # vlab's busybox root, brought as an image or a folder: its init says when it is up.
    if READY_MARKER.encode() in mounts.head(init, 64 << 10):
        return READY_BUSYBOX
    return None
