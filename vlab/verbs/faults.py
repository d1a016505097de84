"""`[[fault]]`s: what goes wrong in a running lab, made for real on the lab's own servers and
network once every terminal's verdict is in, one after another, and whether each terminal
carried on. Every terminal beats while they happen: a shell loop that looks a file up on its
NFS root every half second and writes the outcome, with its uptime, into its tmpfs; read over
SSH afterwards, the beats say when its root stopped answering and when it answered again."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vlab import procs, progress
from vlab.errors import VirtError
from vlab.nodes import virt
from vlab.plan.lab import LabPlan, TerminalPlan
from vlab.progress import Say
from vlab.report.outcome import carried_on
from vlab.scenario.model import LOCAL, Fault, FaultAfter, FaultKind, Scenario
from vlab.serve import firewall, nfsserver
from vlab.verbs.probes import ssh_session
from vlab.watch import cause, sshkeys
from vlab.watch.consoles import log_text
from vlab.watch.judge import OK, Verdict

BEATS = "/tmp/vlab-beats"
# Dentries and inodes dropped first, so each beat's look-up and read go to the NFS server.
HEARTBEAT = (f": > {BEATS}; (while :; do echo 2 > /proc/sys/vm/drop_caches; "
             "if cat /etc/passwd > /dev/null 2>&1; then s=ok; else s=err; fi; "
             f'read up _ < /proc/uptime; echo "$s $up" >> {BEATS}; sleep 0.5; done) '
             "> /dev/null 2>&1 < /dev/null &")
UPTIME = "read up _ < /proc/uptime; echo $up"
READ_TIMEOUT = 10.0  # one SSH read of the beats (it waits while the NFS root does not answer)
NFS_HUNG, NFS_IO_ERROR, NOT_WATCHED = "nfs-hung", "nfs-io-error", "not-watched"
DHCP_NOT_RENEWED = "dhcp-not-renewed"
DAY = 86400
NOT_MADE = "not-made"

Result = dict[str, Any]  # one terminal's outcome of one fault


class Beating:
    """A terminal whose heartbeat runs: its SSH session and its uptime's offset from vlab's
    clock (time.monotonic() = uptime + offset)."""

    def __init__(self, plan: LabPlan, t: TerminalPlan) -> None:
        self.t = t
        self.session = ssh_session(plan, t)
        status, out = self.session.run(HEARTBEAT + " " + UPTIME, timeout=30)
        uptime = _seconds(out.split()[-1]) if status == 0 and out.split() else None
        if uptime is None:
            self.session.close()
            raise sshkeys.SshError(f"the heartbeat did not start: {out.strip()[-200:]!r}")
        self.offset = time.monotonic() - uptime

    def beats(self, timeout: float) -> list[tuple[float, bool]] | None:
        """(when, whether the NFS root answered), on vlab's clock; None if the terminal did
        not answer within timeout s."""
        status, out = self.session.run(f"cat {BEATS}", timeout=timeout)
        if status != 0:
            return None
        return parse_beats(out, self.offset)


def parse_beats(text: str, offset: float) -> list[tuple[float, bool]]:
    """The heartbeat's lines ("ok UPTIME" or "err UPTIME", the guest's text) as (when on
    vlab's clock, whether the NFS root answered); anything else is skipped."""
    found = []
    for line in text.splitlines():
        word, _, up = line.partition(" ")
        if (at := _seconds(up)) is not None:
            found.append((at + offset, word == "ok"))
    return found


def _seconds(text: str) -> float | None:
    """An uptime the guest wrote, or None: "inf" and "nan" are floats too."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def run_faults(sc: Scenario, plan: LabPlan, conns: dict[str, virt.Conn],
               verdicts: dict[TerminalPlan, Verdict],
               restart_nfs: Callable[[], None], say: Say) -> dict[str, list[Result]]:
    """Each [[fault]] with after = "ok" in turn, undone whatever happens; each terminal's
    outcome of each."""
    faults = [f for f in sc.faults if f.after is FaultAfter.OK]
    if not faults:
        return {}
    watched: dict[TerminalPlan, Beating] = {}
    results: dict[str, list[Result]] = {t.name: [] for t in plan.terminals}
    unwatched: dict[str, str] = {}
    for t in plan.terminals:
        if verdicts[t].name != OK:
            unwatched[t.name] = f"its verdict is {verdicts[t].name}"
            continue
        try:
            watched[t] = Beating(plan, t)
        except sshkeys.SshError as err:
            unwatched[t.name] = str(err)
    try:
        for i, fault in enumerate(faults, 1):
            began, ended = _make(fault, f"{i}/{len(faults)}", plan, conns, restart_nfs, say)
            outcomes = _outcomes(watched, began, ended, fault.resume_within)
            if fault.kind is FaultKind.DHCP_RESTART and plan.dhcp_lease is not None:
                renewals(plan, plan.dhcp_lease, outcomes, began, ended, fault.resume_within)
            if any(r["verdict"] != OK for r in outcomes.values()):
                _what_the_server_saw(plan, outcomes)
            for t in plan.terminals:
                r = outcomes.get(t.name) or {"verdict": NOT_WATCHED, "resumed_after": None,
                                             "line": unwatched.get(t.name, "")}
                r = {**_header(fault, began, ended), **r}
                results[t.name].append(r)
                say(f"{t.name}: " + (f"carried on after {fault.kind} ({carried_on(r)})"
                                     if r["verdict"] == OK else
                                     f"{r['verdict']} after {fault.kind}: {r['line']}"))
    finally:
        for b in watched.values():
            b.session.close()
    return results


def _header(fault: Fault, began: float | None, ended: float | None) -> Result:
    """What a fault was and when (seconds into the vlab command; None: not made)."""
    return {"kind": fault.kind.value, "what": fault.describe(), "after": fault.after.value,
            "began": None if began is None else round(began - progress.T0, 2),
            "ended": None if ended is None else round(ended - progress.T0, 2)}


def _make(fault: Fault, which: str, plan: LabPlan, conns: dict[str, virt.Conn],
          restart_nfs: Callable[[], None], say: Say) -> tuple[float, float]:
    """One fault, after its delay, for as long as it lasts; when it began and ended."""
    if fault.delay:
        time.sleep(fault.delay)
    say(f"fault {which} {fault.kind}: {fault.describe()}")
    began = time.monotonic()
    with _made(fault, plan, conns, restart_nfs):
        time.sleep(fault.lasts)
    ended = time.monotonic()
    say(f"fault {which} {fault.kind}: over after {ended - began:.1f} s")
    return began, ended


class DuringBoot:
    """The [[fault]]s with after = "nfs-mounted": made in turn, in a thread of their own,
    once every terminal's console showed its NFS root mounted (or its verdict), while the
    roots' own init still reads from the server. A terminal's outcome of each is its boot's
    verdict: the boot carried on through it, or failed (stalled, timeout, ...)."""

    def __init__(self, sc: Scenario, plan: LabPlan, conns: dict[str, virt.Conn],
                 restart_nfs: Callable[[], None], say: Say) -> None:
        self.faults = [f for f in sc.faults if f.after is FaultAfter.NFS_MOUNTED]
        self.plan, self.conns, self.restart_nfs, self.say = plan, conns, restart_nfs, say
        self.made: list[tuple[Fault, float, float]] = []
        self.failed: list[BaseException] = []
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Every console showed the mount: the faults begin (called once)."""
        self.thread = threading.Thread(target=self._run, name="faults", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for i, fault in enumerate(self.faults, 1):
                began, ended = _make(fault, f"{i}/{len(self.faults)} (during the boot)",
                                     self.plan, self.conns, self.restart_nfs, self.say)
                self.made.append((fault, began, ended))
        except BaseException as err:  # handed to outcomes(), on vlab's own thread
            self.failed.append(err)

    def outcomes(self, started: dict[TerminalPlan, float],
                 verdicts: dict[TerminalPlan, Verdict]) -> dict[str, list[Result]]:
        """Each terminal's outcome of each fault, once they are over (and undone)."""
        if self.thread is not None:
            self.thread.join()
        if self.failed:
            raise self.failed[0]
        out: dict[str, list[Result]] = {}
        for t, v in verdicts.items():
            decided = started[t] + v.seconds
            results = []
            for fault, began, ended in self.made:
                line = ("" if v.ok else v.line) if decided >= began else (
                    "its verdict came before the fault began: the fault did not touch its boot")
                results.append({**_header(fault, began, ended), "verdict": v.name,
                                "resumed_after": None, "line": line})
            for fault in self.faults[len(self.made):]:
                results.append({**_header(fault, None, None), "verdict": NOT_MADE,
                                "resumed_after": None,
                                "line": "not made: not every terminal's console showed its NFS "
                                        "root mounted"})
            out[t.name] = results
        return out


def _what_the_server_saw(plan: LabPlan, outcomes: dict[str, Result]) -> None:
    running = nfsserver.pid(plan) is not None
    connected = nfsserver.clients(plan) if running else set()
    for t in plan.terminals:
        r = outcomes.get(t.name)
        if r is None or r["verdict"] == OK:
            continue
        ip = t.ip6 if plan.ipv6 else t.ip  # a dual-stack lab's root is mounted over IPv6
        r["server"] = ("the NFS server is not running" if not running else
                       f"the NFS server runs and holds {'a' if ip in connected else 'no'} "
                       f"connection from {t.name} ({ip})")
        r["line"] += f"; {r['server']}"


def renewals(plan: LabPlan, lease: int, outcomes: dict[str, Result], began: float,
             ended: float, within: float) -> None:
    """The DHCP server away in a lab with a short lease: a terminal whose lease was due for
    renewal (half of it after the server's last DHCPACK to it) while the server was away must
    renew it within `within` s of the server's return, as the server's log shows; if it does
    not, its outcome is dhcp-not-renewed. Each outcome gets `renewed_after` (s, or None)."""
    to_day = time.time() - time.monotonic()  # vlab's clock to the wall's (dnsmasq's)
    start, end = (_second_of_day(at + to_day) for at in (began, ended))
    due: dict[TerminalPlan, int] = {}
    log = log_text(plan.dnsmasq_log)
    for t in plan.terminals:
        r = outcomes.get(t.name)
        if r is not None and r["verdict"] == OK:
            r["renewed_after"] = None
            if (at := renewal_due(cause.acks_of(t.mac, log), lease, start, end)) is not None:
                due[t] = at
    deadline = ended + within
    while due:
        for t in list(due):
            if (after := renewed_after(cause.acks_of(t.mac, log), end)) is not None:
                outcomes[t.name]["renewed_after"] = after
                del due[t]
        if not due or time.monotonic() >= deadline:
            break
        time.sleep(1)
        log = log_text(plan.dnsmasq_log)
    for t, at in due.items():
        outcomes[t.name].update(
            verdict=DHCP_NOT_RENEWED,
            line=f"its {lease} s DHCP lease was due for renewal {(at - start) % DAY} s into the "
                 f"fault and the DHCP server's log shows no renewal within {within:.0f} s after "
                 "the server's return (does its root run a DHCP client that renews?)")


def renewal_due(acks: list[int], lease: int, start: int, end: int) -> int | None:
    """When a terminal's lease was due for renewal, if that fell while the server was away
    (from start to end): half the lease after the last DHCPACK before the fault. Times are
    seconds into the day (dnsmasq's log has no date)."""
    before = [a for a in acks if _between(a, start - DAY // 2, start)]
    if before and _between(due := (before[-1] + lease // 2) % DAY, start, end):
        return due
    return None


def renewed_after(acks: list[int], end: int) -> int | None:
    """Seconds from the server's return to the first DHCPACK after it, if there is one."""
    after = [a for a in acks if _between(a, end, end + DAY // 2)]
    return (after[0] - end) % DAY if after else None


def _second_of_day(wall: float) -> int:
    t = time.localtime(wall)
    return t.tm_hour * 3600 + t.tm_min * 60 + t.tm_sec


def _between(at: int, low: int, high: int) -> bool:
    """low <= at <= high on a day's clock that may pass midnight in between."""
    return (at - low) % DAY <= (high - low) % DAY


def _outcomes(watched: dict[TerminalPlan, Beating], began: float, ended: float,
              within: float) -> dict[str, Result]:
    def one(b: Beating) -> Result:
        deadline = ended + within
        seen: list[tuple[float, bool]] = []
        while time.monotonic() < deadline:
            got = b.beats(min(READ_TIMEOUT, max(1.0, deadline - time.monotonic())))
            if got is not None:
                seen = got
                if any(ok and at >= ended for at, ok in got):
                    break
            time.sleep(0.5)
        return judge_beats(seen, began, ended, within)

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(watched)))) as pool:
        return {b.t.name: r for b, r in zip(watched.values(), pool.map(one, watched.values()),
                                            strict=True)}


def judge_beats(beats: list[tuple[float, bool]], began: float, ended: float,
                within: float) -> Result:
    """A terminal's outcome of one fault from its heartbeat (pure): ok if its NFS root
    answered again within `within` s after the fault ended and no read failed meanwhile;
    nfs-io-error if a read failed (a soft mount may hand programs the server's absence as
    I/O errors); nfs-hung if it did not answer again in time."""
    failed = [at for at, ok in beats if not ok and at >= began]
    back = [at for at, ok in beats if ok and ended <= at <= ended + within]
    last = max((at for at, ok in beats if ok and at < ended), default=None)
    if failed:
        return {"verdict": NFS_IO_ERROR,
                "resumed_after": round(back[0] - ended, 2) if back else None,
                "line": f"a read of its NFS root failed {failed[0] - began:.1f} s into the "
                        "fault (an I/O error to its programs: is the root mounted soft?)"}
    if not back:
        later = [at for at, ok in beats if ok and at > ended + within]
        return {"verdict": NFS_HUNG,
                "resumed_after": round(later[0] - ended, 2) if later else None,
                "line": f"its NFS root did not answer within {within:.0f} s after the fault "
                        "ended" + (f" (it did {later[0] - ended:.1f} s after)" if later else "")
                        + (f" (last answer {last - began:+.1f} s from the fault's start)"
                           if last is not None else "")}
    return {"verdict": OK, "resumed_after": round(max(0.0, back[0] - ended), 2), "line": ""}


@contextlib.contextmanager
def _made(fault: Fault, plan: LabPlan, conns: dict[str, virt.Conn],
          restart_nfs: Callable[[], None]) -> Iterator[None]:
    """The fault, in place for the with block, and undone after it however it ends."""
    if fault.kind in (FaultKind.NFS_RESTART, FaultKind.NFS_PAUSE):
        server = nfsserver.pid(plan)
        if server is not None:
            (procs.stop if fault.kind is FaultKind.NFS_RESTART else procs.freeze)(server)
        try:
            yield
        finally:
            if fault.kind is FaultKind.NFS_RESTART:
                restart_nfs()
            elif server is not None:
                procs.thaw(server)
    elif fault.kind is FaultKind.DHCP_RESTART:
        if (dnsmasq := virt.dhcp_server(plan.network)) is not None:
            procs.stop(dnsmasq)
        try:
            yield
        finally:
            virt.restart_dhcp_server(conns[LOCAL], plan.network)
    elif fault.kind is FaultKind.PACKET_LOSS:
        firewall.lose_packets(plan, fault.loss)
        try:
            yield
        finally:
            firewall.stop_losing_packets(plan, fault.loss)
    else:
        for t in plan.terminals:
            virt.hold_packets(conns[LOCAL], t.domain, fault.latency)
        try:
            yield
        finally:
            for t in plan.terminals:  # a domain gone meanwhile has no filter to take away
                with contextlib.suppress(VirtError):
                    virt.release_packets(conns[LOCAL], t.domain)
