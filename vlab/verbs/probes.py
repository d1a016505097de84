"""Post-boot `[[probe]]`s, and SSH sessions into terminals (`vlab ssh`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vlab.nodes import labhost, reach, virt
from vlab.plan.lab import LabPlan, TerminalPlan
from vlab.progress import Say
from vlab.report.status import terminal_address
from vlab.scenario.model import Probe, RootSource, Scenario
from vlab.watch import sshkeys
from vlab.watch.judge import Verdict

Result = dict[str, Any]  # one check's name, command, ok, exit status and output


def run_probes(sc: Scenario, plan: LabPlan, verdicts: dict[TerminalPlan, Verdict],
               say: Say) -> dict[str, list[Result]]:
    """The scenario's [[probe]] commands, over SSH, on every terminal that booted."""
    if not sc.probes:
        return {}

    def one(t: TerminalPlan) -> list[Result]:
        if not verdicts[t].ok:
            return _not_run(sc.probes, f"the terminal's verdict is {verdicts[t].name}")
        try:
            session = ssh_session(plan, t)
        except sshkeys.SshError as err:  # booted, but no way in: each check fails, saying why
            say(f"{t.name}: probes not run: {err}")
            return _not_run(sc.probes, str(err))
        try:
            return [_run(session, c, t.name, say) for c in sc.probes]
        finally:
            session.close()

    with ThreadPoolExecutor(max_workers=min(8, len(verdicts))) as pool:
        return {t.name: done for t, done in zip(verdicts, pool.map(one, verdicts), strict=True)}


def _run(session: sshkeys.Session, c: Probe, name: str, say: Say) -> Result:
    status, output = session.run(c.run)
    ok = status == 0 and (c.expect is None or c.expect in output)
    say(f"{name}: check {c.name!r}: " + ("ok" if ok else f"FAILED (exit {status}" + (
        f", no {c.expect!r} in its output" if status == 0 else "") + ")"))
    return {"name": c.name, "run": c.run, "ok": ok, "status": status, "output": output}


def _not_run(probes: tuple[Probe, ...], why: str) -> list[Result]:
    return [{"name": c.name, "run": c.run, "ok": False, "status": None,
             "output": f"not run: {why}"} for c in probes]


# A terminal prints its host key once its SSH server listens, after its ready line (busybox:
# a key made in well under a second, more on a slow TCG guest) or before it (systemd roots).
HOST_KEY_WAIT = 30.0
SSH_ROOTS = (RootSource.BUSYBOX, RootSource.DEBIAN)  # the roots vlab sets SSH up in


def ssh_session(plan: LabPlan, t: TerminalPlan) -> sshkeys.Session:
    """Logged in as root on a terminal, its host key pinned from its own console."""
    h = plan.node(t.node)
    if h.remote:
        netns, answers = h.netns, True
    else:
        host = labhost.status(plan.netns)
        netns, answers = host.netns, host.mode != "down"
    running = False
    if answers:
        conn = reach.connect(h)
        try:
            running = virt.domain_state(conn, t.domain) == "running"
        finally:
            virt.close(conn)
    if not running:
        raise sshkeys.SshError(f"{t.name} is not running; fix: vlab up {plan.scenario}")
    key = sshkeys.await_host_key(t.console_log, HOST_KEY_WAIT)
    if key is None:
        raise sshkeys.SshError(f"{t.name} printed no SSH host key on its console in "
                               f"{HOST_KEY_WAIT:.0f} s; fix: is it up (vlab status)? vlab "
                               "sets up SSH in the busybox and debian roots")
    ip = t.ip or t.ip6 or terminal_address(t)
    if not ip:
        raise sshkeys.SshError(f"{t.name} runs on host {t.node}, whose network gave it an "
                               "address vlab did not see on its console; fix: vlab console "
                               f"{plan.scenario} {t.name}")
    sock = labhost.connect_tcp(netns, ip, 22)
    return sshkeys.connect(sock, ip, key, plan.lab_dir / "ssh", t.name)
