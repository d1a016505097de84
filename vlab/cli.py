"""vlab's command line, and its one exit point: typed errors become a message and an exit code."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlab import __version__, scenario, state
from vlab.errors import BootFailed, DiskFull, Interrupted, Signalled, UsageError, VlabError
from vlab.nodes import labhost, reach, virt
from vlab.plan.lab import NETNS, Dirs, LabPlan, TerminalPlan
from vlab.progress import Say, stderr_progress
from vlab.report.outcome import carried_on
from vlab.report.status import all_ok, status
from vlab.scenario.model import LabHostMode
from vlab.verbs import pxe as lab_pxe
from vlab.verbs.check import check, up_or_nothing, write_page
from vlab.verbs.claim import claim, plan_for
from vlab.verbs.down import down, everything_down
from vlab.verbs.gc import gc
from vlab.verbs.probes import ssh_session
from vlab.verbs.render import render_to
from vlab.watch.guesttext import inert

EXIT_OK, EXIT_BOOT_FAILED, EXIT_BAD_INPUT, EXIT_HOST, EXIT_BUG = 0, 1, 2, 3, 4

DESCRIPTION = """\
Boot stateless Linux terminals over an NFS root, as the Fedora StatelessLinux page does by
hand: build the NFS root, build the initrd that mounts it, export it, define a network with
pinned MACs, boot the terminals through libvirt and read the verdict off their consoles.
"""

EPILOG = """\
examples:
  vlab up scenarios/tiny.toml          boot every terminal; exit 0 only if all mounted NFS root
  vlab status scenarios/tiny.toml      terminals, MACs, IPs, state, last verdict
  vlab console scenarios/tiny.toml t1  the live serial console of t1 (leave with Ctrl-])
  vlab ssh scenarios/tiny.toml t1 -- uname -r   run a command on t1 over SSH (no command: a shell)
  vlab down scenarios/tiny.toml        remove domains, network, NFS server (idempotent)
  vlab render scenarios/tiny.toml --out out/   every artifact vlab would write; nothing started
  vlab check scenarios/tiny.toml --junit out.xml   CI: boot, verdicts, JUnit, tear down
  vlab report scenarios/tiny.toml --out report.html   the last boot as one HTML page
  vlab gc                              remove leftovers of labs whose state is gone

exit codes: 0 ok, 1 a terminal failed to boot, 2 bad input, 3 host or infrastructure failure,
4 an error in vlab itself (a bug: the traceback is logged), 130 interrupted (run vlab down
to remove what was started).
environment: VLAB_CACHE_DIR, VLAB_STATE_DIR override where artifacts and lab state are kept.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vlab", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"vlab {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log every command vlab runs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def scenario_cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("scenario", type=Path, help="scenario file (TOML), e.g. scenarios/tiny.toml")
        return c

    c = scenario_cmd("up", "build what is missing, boot every terminal, print the verdict")
    c.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    c.add_argument("--report", type=Path, metavar="FILE",
                   help="also write the boot report (one HTML file) here")
    c = scenario_cmd("check", "for CI: boot every terminal, wait for every verdict, tear "
                     "everything down; exit 0 all ok, 1 a terminal failed, 2 bad input, "
                     "3 host failure")
    c.add_argument("--junit", type=Path, help="write a JUnit XML report here")
    c.add_argument("--report", type=Path, metavar="FILE",
                   help="write the boot report (one HTML file) here")
    c.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    c.add_argument("--timeout", type=int, help="seconds each terminal gets (default: the "
                   "scenario's [lab] timeout)")
    c.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    c = scenario_cmd("report", "write the boot report of the lab's last boot: one HTML file "
                     "with each terminal's verdict, phase timeline and console")
    c.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="the HTML file to write, e.g. report.html")
    c = scenario_cmd("status", "terminals, MACs, IPs, state and last verdict of a lab")
    c.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    c = scenario_cmd("console", "attach to the live serial console of one terminal (Ctrl-] leaves)")
    c.add_argument("terminal", help="terminal name, as in the scenario")
    c = scenario_cmd("ssh", "a shell on a terminal over SSH, or run COMMAND there and exit "
                     "with its status (host key pinned from the terminal's console)")
    c.add_argument("terminal", help="terminal name, as in the scenario")
    c.add_argument("remote", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="the command to run (after --); without it, an interactive shell")
    scenario_cmd("down", "destroy the lab's domains, network and NFS server (idempotent)")
    c = scenario_cmd("render", "write every artifact vlab would use into a folder; start nothing")
    c.add_argument("--out", type=Path, required=True, help="folder to write into")
    c = scenario_cmd("pxe", "write the TFTP tree (pxelinux, GRUB, iPXE) and DHCP/NFS snippets "
                     "for the scenario's [[machine]]s; --twins boots a virtual twin of each")
    c.add_argument("--tftp-dir", type=Path, required=True,
                   help="the TFTP server's folder, e.g. /tftpboot/linux-install")
    c.add_argument("--twins", action="store_true",
                   help="boot a virtual twin per machine through the files just written")
    c.add_argument("--twins-only", action="store_true",
                   help="boot the twins through the tree as it is now; write nothing")
    c.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sub.add_parser("gc", help="remove vlab-labelled leftovers of labs whose state is gone",
                   description="Remove domains, networks, NFS servers and mounts that carry "
                   "vlab's labels but belong to no lab vlab knows (e.g. its state folder was "
                   "deleted). Labs that are up are not touched; vlab down takes those down.")
    h = sub.add_parser("lab-host", help="the isolated lab host (a libvirtd in its own namespace)",
                       description="Start, stop or show vlab's isolated lab host: virtlogd "
                       f"and libvirtd in network namespace {NETNS}, used when no system "
                       "libvirtd answers. vlab up starts it on demand.")
    h.add_argument("action", choices=("up", "down", "status"))
    return p


def _print_report(rep: dict[str, Any]) -> None:
    print(f"lab {rep['lab']}")
    if "lab_host" in rep:
        print(f"  {rep['lab_host']}")
        pid, dhcp = rep.get("nfs_server_pid"), rep.get("dhcp_server_pid")
        parts = [f"network: {rep.get('network') or 'down'}"]
        if rep.get("network"):
            parts.append(f"DHCP server: {f'pid {dhcp}' if dhcp else 'down'}")
        nfs = f"pid {pid}" if pid else _down_since(rep.get("nfs_server_ended"))
        parts.append(f"NFS server: {nfs}")
        if "firewall" in rep:
            parts.append(f"firewall rule: {rep['firewall']}")
        print("  " + ", ".join(parts))
        if rep.get("network") and not dhcp:
            print(f"  the lab network's DHCP server (dnsmasq) is not running: no terminal gets "
                  f"or renews an address; fix: vlab up {rep['scenario']} starts it again")
        if rep.get("network") and not pid:
            print(f"  the lab's NFS server is not running: its terminals' NFS mounts wait for "
                  f"it; fix: vlab up {rep['scenario']} starts it again")
        if rep.get("firewall") == "missing":
            print(f"  the lab's firewall rule is missing: its servers answer the LAN; fix: vlab "
                  f"up {rep['scenario']} puts it back")
    for name, why in rep.get("unreachable", {}).items():
        print(f"  host {name}: does not answer ({why})")
    for t in rep["terminals"]:
        verdict = t["verdict"] or "-"
        secs = f" in {t['seconds']} s" if t["seconds"] is not None else ""
        print(f"  {t['name']:<10} {t['node']:<8} {t['mac']}  {t['ip']:<15} "
              f"{t['state']:<8} {verdict}{secs}")
        if t["proof"]:
            p = t["proof"]
            print(inert(f"      proof: {p['server']}:{p['export']} {p['fstype']} "
                        f"{p['options']}"))
        elif t.get("line"):
            print(f"      decisive line: {inert(t['line'])}")
        for f in t.get("faults", []):
            print(f"      fault {f['kind']}"
                  + (f" at {f['began']} s" if f.get("began") is not None else "")
                  + f": {f['verdict']}"
                  + (f", {how}" if (how := carried_on(f)) else "")
                  + (f" ({f['line']})" if f["verdict"] != "ok" else ""))
        print(f"      console log: {t['console_log']}")


def _down_since(ended: float | None) -> str:
    if ended is None:
        return "down"
    return (f"down since {time.strftime('%H:%M:%S', time.localtime(ended))} "
            f"({max(0, time.time() - ended):.0f} s)")


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        dirs = Dirs.from_env()
        raise DiskFull(err, _down_command(args),
                       f"vlab's state folder {dirs.state} or its cache {dirs.cache}") from None
    except KeyboardInterrupt as err:
        down = _down_command(args)
        signum = err.signum if isinstance(err, Signalled) else signal.SIGINT
        raise Interrupted(f"{'interrupted' if signum == signal.SIGINT else 'ended'} by "
                          f"{signal.Signals(signum).name}; `{down}` removes what was "
                          "started", signum) from None


def _down_command(args: argparse.Namespace) -> str:
    return f"vlab down {args.scenario}" if "scenario" in args else "vlab lab-host down"


def _on_signal(signum: int, _frame: object) -> None:
    raise Signalled(signum)


NEEDS_ROOT = ("up", "down", "lab-host", "gc", "check", "ssh")


def _dispatch(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="vlab: %(message)s")
    if os.geteuid() != 0 and args.command in NEEDS_ROOT:
        raise UsageError(f"vlab {args.command} needs root (namespaces, libvirtd, the NFS server)"
                         "; fix: run it as root")
    dirs = Dirs.from_env()
    say = stderr_progress()
    if args.command == "lab-host":
        return _lab_host(args.action, dirs, say)
    if args.command == "gc":
        return _gc(dirs, say)
    sc = scenario.load(args.scenario)
    command: Command = COMMANDS[args.command]
    return command(args, sc, dirs, say)


Command = Callable[[argparse.Namespace, scenario.Scenario, Dirs, Say], int]


def _gc(dirs: Dirs, say: Say) -> int:
    removed = gc(dirs, say)
    print(f"removed {len(removed)} leftover(s)" if removed else "nothing to remove")
    return EXIT_OK


def _render(args: argparse.Namespace, sc: scenario.Scenario, dirs: Dirs, say: Say) -> int:
    for path in render_to(plan_for(sc, dirs), args.out):
        print(path)
    return EXIT_OK


def _up(args: argparse.Namespace, sc: scenario.Scenario, dirs: Dirs, say: Say) -> int:
    if not sc.terminals:
        raise UsageError(f"{args.scenario}: no [[terminal]] to boot; fix: add one, or "
                         "use vlab pxe for the [[machine]]s")
    plan = claim(sc, dirs)
    rep = up_or_nothing(sc, plan, dirs, say)
    write_page(rep, args.report, say)
    _output(rep, args.json)
    if not all_ok(rep):
        raise BootFailed(f"{_failures(rep)}\n  the terminals are left running for a look "
                         f"(vlab console {args.scenario} NAME); vlab down removes them")
    return EXIT_OK


def _pxe(args: argparse.Namespace, sc: scenario.Scenario, dirs: Dirs, say: Say) -> int:
    if not sc.pxe.machines:
        raise UsageError(f"{args.scenario}: no [[machine]] tables; fix: list the physical "
                         'machines: [[machine]] name = "pc1" mac = "00:11:22:33:44:55"')
    twins = args.twins or args.twins_only
    if twins:
        lab_pxe.refuse_twins(sc, dirs, args.tftp_dir)
    plan = claim(sc, dirs, twins=True) if twins else plan_for(sc, dirs)
    changes, booted = lab_pxe.pxe(plan, dirs, args.tftp_dir, say,
                                  write=not args.twins_only, twins=twins)
    out: dict[str, Any] = {"lab": plan.name, "tftp_dir": str(args.tftp_dir),
                           "written": changes.written, "removed": changes.removed,
                           "unchanged": changes.unchanged}
    if booted is not None:
        out["twins"] = booted
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for rel in changes.written:
            print(f"wrote   {args.tftp_dir / rel}")
        for rel in changes.removed:
            print(f"removed {args.tftp_dir / rel}")
        if twins:
            _print_report(out["twins"])
    if twins and not all_ok(out["twins"]):
        raise BootFailed("a virtual twin did not boot through the PXE tree")
    return EXIT_OK


def _report(args: argparse.Namespace, sc: scenario.Scenario, dirs: Dirs, say: Say) -> int:
    rep = status(plan_for(sc, dirs))
    if not any(t["verdict"] for t in rep["terminals"]):
        raise UsageError(f"lab {rep['lab']} has no boot on record; fix: vlab up or vlab check "
                         f"{args.scenario} first")
    write_page(rep, args.out, say)
    return EXIT_OK


def _status(args: argparse.Namespace, sc: scenario.Scenario, dirs: Dirs, say: Say) -> int:
    _output(status(plan_for(sc, dirs)), args.json)
    return EXIT_OK


def _down(args: argparse.Namespace, sc: scenario.Scenario, dirs: Dirs, say: Say) -> int:
    plan = plan_for(sc, dirs)
    down(plan, dirs, say)
    say(f"lab {plan.name} is down")
    return EXIT_OK


def _ssh(args: argparse.Namespace, sc: scenario.Scenario, dirs: Dirs, say: Say) -> int:
    plan = plan_for(sc, dirs)
    t = _terminal(args, plan)
    command = args.remote[1:] if args.remote[:1] == ["--"] else args.remote
    session = ssh_session(plan, t)
    try:
        if not command:
            return session.shell()
        exit_status, output = session.run(" ".join(command), timeout=3600, limit=None)
    finally:
        session.close()
    sys.stdout.write(output)
    return exit_status


def _console(args: argparse.Namespace, sc: scenario.Scenario, dirs: Dirs, say: Say) -> int:
    plan = plan_for(sc, dirs)
    t = _terminal(args, plan)
    conn = reach.connect(plan.node(t.node))
    print(f"Connected to {t.domain} on {t.node}; leave with Ctrl-]", file=sys.stderr)
    virt.attach_console(conn, t.domain)
    return EXIT_OK


def _check(args: argparse.Namespace, sc: scenario.Scenario, dirs: Dirs, say: Say) -> int:
    if args.timeout is not None and not 10 <= args.timeout <= 3600:
        raise UsageError(f"--timeout {args.timeout}: use 10 to 3600 seconds")
    if not sc.terminals:
        raise UsageError(f"{args.scenario}: no [[terminal]] to boot")
    plan = claim(sc, dirs, timeout=args.timeout)
    rep = check(sc, plan, dirs, say, junit=args.junit, page=args.report, keep=args.keep)
    _output(rep, args.json)
    if not all_ok(rep):
        raise BootFailed(_failures(rep))
    return EXIT_OK


COMMANDS: dict[str, Command] = {
    "render": _render, "up": _up, "pxe": _pxe, "check": _check, "status": _status,
    "down": _down, "ssh": _ssh, "console": _console, "report": _report,
}


def _failures(rep: dict[str, Any]) -> str:
    failed = [f"{t['name']} ({t['verdict']})" for t in rep["terminals"] if t["verdict"] != "ok"]
    probes = [f"{t['name']}: {c['name']}" for t in rep["terminals"]
              for c in t.get("probes", []) if not c["ok"] and t["verdict"] == "ok"]
    faults = [f"{t['name']}: {f['kind']} ({f['verdict']})" for t in rep["terminals"]
              for f in t.get("faults", []) if f["verdict"] != "ok" and t["verdict"] == "ok"]
    after = [f"{t['name']}: {c['name']}" for t in rep["terminals"]
             for c in t.get("probes_after", []) if not c["ok"] and t["verdict"] == "ok"]
    parts = []
    if failed:
        parts.append(f"{len(failed)} terminal(s) did not mount the NFS root: {', '.join(failed)}")
    if probes:
        parts.append(f"{len(probes)} post-boot probe(s) failed: {', '.join(probes)}")
    if faults:
        parts.append(f"{len(faults)} fault(s) a terminal did not carry on after: "
                     f"{', '.join(faults)}")
    if after:
        parts.append(f"{len(after)} probe(s) failed after the faults: {', '.join(after)}")
    return "; ".join(parts)


def _terminal(args: argparse.Namespace, plan: LabPlan) -> TerminalPlan:
    t = plan.terminal(args.terminal)
    if t is None:
        names = ", ".join(x.name for x in plan.terminals)
        raise UsageError(f"{args.scenario}: no terminal {args.terminal!r}; "
                         f"fix: use one of {names}")
    return t


def _output(rep: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rep, indent=2))
    else:
        _print_report(rep)


def _lab_host(action: str, dirs: Dirs, say: Say) -> int:
    if action == "up":
        host = labhost.ensure(LabHostMode.ISOLATED, NETNS, dirs.state / "host")
        state.remove(dirs.state, state.HOST_FILE)
        print(host.describe())
    elif action == "down":
        everything_down(NETNS, dirs, say)
    else:
        host = labhost.status(NETNS)
        print(host.describe())
        print(f"  why: {host.why()}")
    return EXIT_OK


EXIT_PIPE = 141  # 128 + SIGPIPE: what a shell reports of a command a closed pipe ended


def main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):  # as Ctrl-C: a CI job cancelled, a shell closed
        signal.signal(sig, _on_signal)
    try:
        code = run(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is met where it is handled
        return code
    except BrokenPipeError:
        # `vlab status | head`: the reader has gone; end quietly, as other tools do (and
        # let nothing flush into the closed pipe again at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except VlabError as err:
        # A builder's output or a remote host's answer can be in it: shown inert.
        print(f"vlab: {inert(err.message())}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        print("vlab: interrupted; run `vlab down SCENARIO` to remove what was started",
              file=sys.stderr)
        return 128 + (err.signum if isinstance(err, Signalled) else signal.SIGINT)
    except Exception:  # a bug: never exit 1, which CI reads as "a terminal failed to boot"
        log = _log_traceback()
        kind, value = sys.exc_info()[:2]
        print(f"vlab: internal error ({kind.__name__ if kind else 'error'}: "
              f"{inert(str(value))}); this is "
              f"a bug in vlab, not a verdict; the traceback is in {log}; run `vlab down "
              "SCENARIO` to remove what was started", file=sys.stderr)
        return EXIT_BUG


def _log_traceback() -> Path:
    """The current exception's traceback, appended to the state folder's error log."""
    text = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} vlab {' '.join(sys.argv[1:])}\n"
    text += traceback.format_exc()
    for folder in (Dirs.from_env().state, Path(tempfile.gettempdir())):
        path = folder / "vlab-errors.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return Path("(nowhere: no folder was writable)")
