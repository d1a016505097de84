"""A lab's life: up (the seed page's steps, in order), status, down."""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from vlab import (
    builders,
    cache,
    initrd,
    kernel,
    labhost,
    mounts,
    nfsroot,
    nfsserver,
    procs,
    progress,
    render,
    ship,
    sshkeys,
    state,
    tftp,
    virt,
)
from vlab import pxe as pxe_site
from vlab.errors import HostError, ScenarioError, VirtError
from vlab.plan import (
    NETNS,
    Dirs,
    HostPlan,
    LabPlan,
    TerminalPlan,
    make_plan,
    pinned_mac,
    place,
)
from vlab.scenario import LOCAL, Hypervisor, InitrdBuilder, KernelSource, RootSource, Scenario
from vlab.watch import (
    OK,
    READY_BUSYBOX,
    READY_SYSTEMD,
    STALLED,
    Verdict,
    address_from_console,
    shared_client_ids,
    watch,
)

Say = Callable[[str], None]
HOST_FILE = "host.json"
# A root whose init vlab cannot recognise is ok once it has run this long after the proof.
SETTLE_SECONDS = 5.0
RPCBIND_PID = "rpcbind.pid"


def stderr_progress() -> Say:
    def say(text: str) -> None:
        print(f"[{time.monotonic() - progress.T0:5.1f}s] {text}", file=sys.stderr, flush=True)

    return say


# ---- up -------------------------------------------------------------------------------------


def plan_for(sc: Scenario, dirs: Dirs, free_mib: dict[str, int] | None = None) -> LabPlan:
    """The lab's plan on this machine: its recorded lease and placement (a lab that is up
    keeps its terminals where they are), or a lease clear of the other labs' and terminals
    placed by the hosts' free memory."""
    lab_dir = dirs.state / "labs" / sc.lab.name
    recorded = state.load(lab_dir).get("placement")
    return make_plan(sc, dirs, state.taken(dirs.state, sc.lab.name),
                     state.recorded_attempt(lab_dir),
                     recorded if isinstance(recorded, dict) else place(sc, free_mib))


def claim(sc: Scenario, dirs: Dirs) -> LabPlan:
    """The plan of a lab about to be built; its lease is recorded before anything is made."""
    free = preflight(sc)  # bad input: nothing created, not even the lease
    with state.machine_locked(dirs.state):
        plan = plan_for(sc, dirs, free)
        # Not while another vlab works on this lab (LabBusy): that one's state is its own.
        with state.locked(plan.lab_dir, plan.lab):
            state.update(plan.lab_dir, scenario=str(plan.scenario),
                         lease=state.lease_of(plan),
                         placement={t.name: t.host for t in plan.terminals})
    return replace(plan, ssh_key=sshkeys.lab_key(plan.lab_dir / "ssh"))


def preflight(sc: Scenario) -> dict[str, int]:
    """Checks that need the outside world, done before anything is created (exit 2); returns
    the free memory of each host, for placing terminals."""
    uri = sc.lab.uri
    if re.match(r"^\w+(\+\w+)?://[^/]", uri):  # a remote host the scenario names
        why = virt.refuses(uri)
        if why is not None:
            raise ScenarioError(sc.path, "lab.uri", f"{uri!r} does not answer ({why})",
                                "check that the host is up and libvirtd listens there, or leave "
                                "uri out to use this machine")
    if not sc.libvirt_hosts:
        return {}
    free = {LOCAL: labhost.free_memory_mib()}
    for i, h in enumerate(sc.libvirt_hosts):
        if h.netns is not None and not labhost.netns_exists(h.netns):
            raise ScenarioError(sc.path, f"libvirt_host[{i}].netns", f"{h.netns!r}: no such "
                                "network namespace", "create it, or leave netns out")
        ship_session(h.name, h.uri, h.netns).close()  # its SSH host key is known
        try:
            conn = connect_uri(h.uri, h.netns)
        except VirtError as err:
            raise ScenarioError(sc.path, f"libvirt_host[{i}].uri", f"{h.uri!r} does not "
                                f"answer ({err.detail})", "check that libvirtd runs there and "
                                "that this user may use it over SSH") from None
        try:
            free[h.name] = virt.free_memory_mib(conn)
            if h.network is not None and not virt.network_active(conn, h.network):
                raise ScenarioError(sc.path, f"libvirt_host[{i}].network", f"{h.network!r} is "
                                    f"not an active libvirt network on {h.name}",
                                    f"start it there (virsh -c {h.uri} net-start {h.network}), "
                                    "or name one that virsh net-list shows")
        finally:
            conn.close()
    return free


def ship_session(name: str, uri: str, netns: str | None) -> ship.Host:
    """An SSH session to a hypervisor host, its host key checked against known_hosts."""
    return ship.Host(name, uri, lambda address, port: labhost.connect_tcp(netns, address, port))


def connect_host(h: HostPlan) -> virt.Conn:
    return connect_uri(h.uri, h.netns)


def connect_uri(uri: str, netns: str | None) -> virt.Conn:
    """A libvirt connection; to a host reached from a namespace, opened from inside it."""
    return labhost.in_netns(netns, lambda: virt.connect(uri))


def up(scenario: Scenario, plan: LabPlan, dirs: Dirs, say: Say) -> dict[str, Any]:
    """Build what is missing, export the root, boot every terminal, return the report."""
    with state.locked(plan.lab_dir, plan.lab):
        state.update(plan.lab_dir, scenario=str(plan.scenario), status="starting")
        build_nfs_root(plan, say)
        k, img = build_boot_files(plan, dirs, say)
        netns = start_lab_host(plan, dirs, say)
        conns = {h.name: connect_host(h) for h in plan.hosts
                 if not h.remote or plan.on(h)}
        if all(virt.domain_state(conns[t.host], t.domain) == "running" for t in plan.terminals):
            say(f"lab {plan.lab} is already up: nothing changed")
            return report(plan, conns)
        tftp_root = write_lab_tftp_tree(scenario, plan, k, img, say)
        export_nfs_root(plan, dirs, netns, say)  # starts while the network is defined
        define_network(plan, conns[LOCAL], netns, say, tftp_root)
        ship_boot_files(plan, k, say)
        wait_for_nfs_server(plan, say)
        started = boot_terminals(plan, conns, say)
        verdicts = watch_consoles(plan, started, say)
        checks = run_checks(scenario, plan, verdicts, say)
        state.update(plan.lab_dir, status="up")
        save_results(plan, started, verdicts, checks)
        return report(plan, conns)


def build_nfs_root(plan: LabPlan, say: Say) -> None:
    source = plan.root_source
    if source is RootSource.BUSYBOX:
        say(f"NFS root: busybox terminal at {plan.export_path}")
        nfsroot.build_busybox(plan.export_path)
    elif source is RootSource.DEBIAN:
        nfsroot.build_debian(plan.export_path, plan.debian_suite, plan.debian_packages, say)
        say(f"NFS root: Debian {plan.debian_suite} at {plan.export_path}")
    elif source is RootSource.IMAGE:
        assert plan.root_image is not None
        state.update(plan.lab_dir, image=str(plan.root_image), image_mount=str(plan.export_path))
        nfsroot.mount_image(plan.root_image, plan.export_path)
        say(f"NFS root: image {plan.root_image}, attached and mounted read-only at "
            f"{plan.export_path}")
    else:
        say(f"NFS root: directory {plan.export_path}, as it is")


def build_boot_files(plan: LabPlan, dirs: Dirs, say: Say) -> tuple[kernel.Kernel, Path]:
    if plan.kernel_source is KernelSource.ROOT:
        k = kernel.from_root(plan.export_path, plan.kernel_version, dirs.cache, plan.scenario)
        say(f"kernel: {k.release}, the root's own")
    else:
        say(f"kernel: {plan.kernel_package} from Debian (cached after the first fetch)")
        k = kernel.fetch(plan.kernel_package, dirs.cache)
    if plan.builder is InitrdBuilder.VLAB:
        say(f"initrd: vlab's busybox initrd for {k.release} with "
            f"{', '.join(initrd.modules_for(plan))}")
        img = initrd.build(k, plan, dirs.cache)
    else:
        say(f"initrd: {plan.builder.value} chrooted in the root for {k.release} "
            "(cached after the first build)")
        # Recorded first: if vlab is killed mid-build, vlab down unmounts them.
        state.update(plan.lab_dir, build_root=str(plan.export_path))
        img = builders.build(plan, plan.export_path, k, dirs.cache)
        state.update(plan.lab_dir, build_root=None)
    boot = plan.kernel_path.parent
    boot.mkdir(parents=True, exist_ok=True)
    for d in (dirs.state, dirs.state / "labs", plan.lab_dir, boot):
        d.chmod(0o755)  # QEMU (libvirt-qemu) must reach the kernel and initrd
    for src, dst in ((k.boot_image, plan.kernel_path), (img, plan.initrd_path)):
        tmp = dst.with_name(dst.name + ".new")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    return k, img


def start_lab_host(plan: LabPlan, dirs: Dirs, say: Say) -> str | None:
    with state.machine_locked(dirs.state):  # two labs coming up start one host
        before = labhost.status(plan.netns)
        if before.mode == "down":
            say(f"lab host: starting an isolated libvirtd in network namespace {plan.netns}")
            state.save(dirs.state, {"on_demand": True}, HOST_FILE)
        host = labhost.ensure(plan.host_mode, plan.netns, dirs.state / "host")
    say(host.describe())
    state.update(plan.lab_dir, host=host.mode, netns=host.netns, uri=plan.uri)
    return host.netns


def write_lab_tftp_tree(scenario: Scenario, plan: LabPlan, k: kernel.Kernel, img: Path,
                        say: Say) -> Path | None:
    """Terminals with boot = "pxe" boot through a TFTP tree of the lab's own."""
    hosts = pxe_site.terminal_hosts(scenario, plan)
    if not hosts:
        return None
    site = pxe_site.site_plan(scenario, plan, hosts)
    copies = {**tftp.bootloaders(), pxe_site.KERNEL: k.vmlinuz, pxe_site.INITRD: img}
    tftp.write_tree(plan.tftp_root, pxe_site.shared_files(site), copies,
                    pxe_site.host_groups(site))
    say(f"PXE: TFTP tree {plan.tftp_root} for {', '.join(h.name for h in hosts)}")
    return plan.tftp_root


def define_network(plan: LabPlan, conn: virt.Conn, netns: str | None, say: Say,
                   tftp_root: Path | None = None) -> None:
    say(f"network {plan.network}: bridge {plan.bridge}, {plan.subnet}, "
        f"{len([t for t in plan.terminals if t.ip])} pinned DHCP hosts"
        + (", PXE" if tftp_root else ""))
    state.update(plan.lab_dir, network=plan.network)
    virt.start_network(conn, plan.network, render.network_xml(plan, tftp_root))


def export_nfs_root(plan: LabPlan, dirs: Dirs, netns: str | None, say: Say) -> None:
    state.update(plan.lab_dir, nfs_server=str(plan.nfs_server_dir))
    plan.nfs_server_dir.mkdir(parents=True, exist_ok=True)
    (plan.lab_dir / "exports").write_text(render.exports_line(plan))
    nfsserver.start(plan, netns, dirs.state / RPCBIND_PID)


def ship_boot_files(plan: LabPlan, k: kernel.Kernel, say: Say) -> None:
    """The kernel and initrd to every other host that runs a terminal (direct kernel boot
    reads them there); what is already there with the right checksum stays."""
    for h in plan.hosts:
        if not h.remote or not plan.on(h):
            continue
        state.update(plan.lab_dir, shipped=sorted({*state.load(plan.lab_dir).get(
            "shipped", []), h.name}))
        t0 = time.monotonic()
        with ship_session(h.name, h.uri, h.netns) as session:
            done = session.ship(boot_files_for(plan, k, h))
        say(f"host {h.name}: " + (f"shipped {len(done.moved)} file(s), "
            f"{done.bytes / 2**20:.1f} MiB, to {h.files_dir} in {time.monotonic() - t0:.1f} s"
            if done.moved else f"kernel and initrd already in {h.files_dir}")
            + (f" ({len(done.kept)} kept)" if done.moved and done.kept else ""))


def boot_files_for(plan: LabPlan, k: kernel.Kernel, h: HostPlan) -> dict[Path, str]:
    """What goes to another host: local file -> its path there. A KVM host gets the
    compressed kernel (~8 MiB, decompressed in a blink); a TCG one the uncompressed ELF vlab
    boots here too (~60 MiB: ~0.5 s more to ship on a LAN, ~2.3 s less to boot)."""
    kernel_file = k.boot_image if plan.hypervisor is Hypervisor.QEMU else k.vmlinuz
    return {kernel_file: str(h.kernel_path), plan.initrd_path: str(h.initrd_path)}


def wait_for_nfs_server(plan: LabPlan, say: Say) -> None:
    """The guests boot only once the NFS server listens: they never wait for it."""
    pid = nfsserver.wait_ready(plan)
    say(f"export: nfs-ganesha (pid {pid}) serves {plan.export_path} read-only to "
        f"{', '.join(map(str, plan.nfs_clients))} on {plan.gateway}:{plan.nfs_port}")


def boot_terminals(plan: LabPlan, conns: dict[str, virt.Conn],
                   say: Say) -> dict[TerminalPlan, float]:
    state.update(plan.lab_dir, domains=[t.domain for t in plan.terminals],
                 hosts={t.domain: t.host for t in plan.terminals})
    xml = {t: render.domain_xml(plan, t) for t in plan.terminals}
    started: dict[TerminalPlan, float] = {}

    def boot(t: TerminalPlan) -> None:
        conn = conns[t.host]
        t.console_log.parent.mkdir(parents=True, exist_ok=True)
        t.console_log.unlink(missing_ok=True)
        virt.destroy_domain(conn, t.domain)
        if t.host == LOCAL:
            started[t] = time.monotonic()
            virt.start_domain(conn, xml[t])
        else:  # its console comes over libvirt: open it before the guest runs
            virt.start_domain(conn, xml[t], paused=True)
            virt.relay_console(connect_host(plan.host(t.host)), t.domain, t.console_log)
            started[t] = time.monotonic()
            virt.resume_domain(conn, t.domain)
        say(f"boot {t.name}: {t.domain} on {t.host}, MAC {t.mac}"
            + (f", IP {t.ip}" if t.ip else ", IP from its network's DHCP"))

    with ThreadPoolExecutor(max_workers=min(8, len(plan.terminals))) as pool:
        list(pool.map(boot, plan.terminals))  # list(): re-raise the first failure here
    return {t: started[t] for t in plan.terminals}


def watch_consoles(plan: LabPlan, started: dict[TerminalPlan, float],
                   say: Say) -> dict[TerminalPlan, Verdict]:
    ready = ready_line(plan)
    say(f"watching {len(started)} console(s) for the NFS root (timeout {plan.timeout} s)")
    stall = min(plan.stall, plan.timeout)

    stop = threading.Event()
    board = progress.Board([t.name for t in started])

    def one(t: TerminalPlan) -> Verdict:
        v = watch(t.console_log, started=started[t], timeout=plan.timeout, stall=stall,
                  ready=ready, settle=SETTLE_SECONDS, stop=stop,
                  on_phase=lambda phase: board.set(t.name, phase))
        board.done(t.name, v.name, v.seconds)
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
    for t, v in verdicts.items():
        if not v.ok:
            say(f"{t.name}: {v.name}: {v.line}")
        if v.name == STALLED and plan.hypervisor is Hypervisor.KVM:
            say(f"{t.name}: no console output for {stall:.0f} s under KVM; if this machine "
                'cannot run KVM guests, set hypervisor = "qemu" in [lab]')
    for client, names in shared_client_ids({t.name: v for t, v in verdicts.items()}).items():
        say(f"{', '.join(names)}: one NFSv4 client id ({client}), so the server takes them "
            "for one client and their mounts can fail; give each its own "
            "nfs.nfs4_unique_id= (vlab sets one from the MAC unless a cmdline sets another)")
    return verdicts


def save_results(plan: LabPlan, started: dict[TerminalPlan, float],
                 verdicts: dict[TerminalPlan, Verdict],
                 checks: dict[str, list[dict[str, Any]]] | None = None) -> None:
    # booted_at: seconds into the vlab command when the domain started (seconds count from it).
    state.save(plan.lab_dir, {t.name: {**asdict(v), "booted_at": round(started[t] - progress.T0, 2),
                                       "checks": (checks or {}).get(t.name, [])}
                              for t, v in verdicts.items()}, state.RESULTS)


def run_checks(sc: Scenario, plan: LabPlan, verdicts: dict[TerminalPlan, Verdict],
               say: Say) -> dict[str, list[dict[str, Any]]]:
    """The scenario's [[check]] commands, over SSH, on every terminal that booted."""
    results: dict[str, list[dict[str, Any]]] = {}
    if not sc.checks:
        return results

    def one(t: TerminalPlan) -> list[dict[str, Any]]:
        def not_run(why: str) -> list[dict[str, Any]]:
            return [{"name": c.name, "run": c.run, "ok": False, "status": None,
                     "output": f"not run: {why}"} for c in sc.checks]

        if not verdicts[t].ok:
            return not_run(f"the terminal's verdict is {verdicts[t].name}")
        done = []
        try:
            session = ssh_session(plan, t)
        except sshkeys.SshError as err:  # booted, but no way in: each check fails, saying why
            say(f"{t.name}: checks not run: {err}")
            return not_run(str(err))
        try:
            for c in sc.checks:
                status, output = session.run(c.run)
                ok = status == 0 and (c.expect is None or c.expect in output)
                done.append({"name": c.name, "run": c.run, "ok": ok, "status": status,
                             "output": output})
                say(f"{t.name}: check {c.name!r}: " + ("ok" if ok else
                    f"FAILED (exit {status}" + (f", no {c.expect!r} in its output" if
                                                status == 0 else "") + ")"))
        finally:
            session.close()
        return done

    with ThreadPoolExecutor(max_workers=min(8, len(verdicts))) as pool:
        for t, done in zip(verdicts, pool.map(one, verdicts), strict=True):
            results[t.name] = done
    return results


def ssh_session(plan: LabPlan, t: TerminalPlan) -> sshkeys.Session:
    """Logged in as root on a terminal, its host key pinned from its own console."""
    h = plan.host(t.host)
    if h.remote:
        netns, answers = h.netns, True
    else:
        host = labhost.status(plan.netns)
        netns, answers = host.netns, host.mode != "down"
    running = answers and virt.domain_state(connect_host(h), t.domain) == "running"
    if not running:
        raise sshkeys.SshError(f"{t.name} is not running; fix: vlab up {plan.scenario}")
    key = sshkeys.host_key_from_console(t.console_log)
    if key is None:
        raise sshkeys.SshError(f"{t.name} printed no SSH host key on its console; fix: is it "
                               "up (vlab status)? vlab sets up SSH in the busybox and debian roots")
    ip = t.ip or terminal_address(t)
    if not ip:
        raise sshkeys.SshError(f"{t.name} runs on host {t.host}, whose network gave it an "
                               "address vlab did not see on its console; fix: vlab console "
                               f"{plan.scenario} {t.name}")
    sock = labhost.connect_tcp(netns, ip, 22)
    return sshkeys.connect(sock, ip, key, plan.lab_dir / "ssh", t.name)


def terminal_address(t: TerminalPlan) -> str | None:
    """The address a terminal on another host got from its network, as its initrd said."""
    return None if t.host == LOCAL else address_from_console(t.console_log)


def ready_line(plan: LabPlan) -> re.Pattern[str] | None:
    """What the root's own init prints once the terminal is up, by what its init is."""
    if plan.root_source is RootSource.BUSYBOX:
        return READY_BUSYBOX
    # inside() follows the root's own symlinks (/sbin/init -> /lib/systemd/systemd).
    if mounts.inside(plan.export_path, "sbin/init").name == "systemd":
        return READY_SYSTEMD
    return None


# ---- status ---------------------------------------------------------------------------------


def report(plan: LabPlan, conns: dict[str, virt.Conn | None]) -> dict[str, Any]:
    """The lab's terminals: where they run, their state there, their last verdict. A host
    missing from conns is down (the local one) or does not answer (another one)."""
    results = state.load(plan.lab_dir, state.RESULTS)
    terminals = []
    for t in plan.terminals:
        r = results.get(t.name, {})
        conn = conns.get(t.host)
        terminals.append({
            "name": t.name,
            "host": t.host,
            "domain": t.domain,
            "mac": t.mac,
            "ip": t.ip or terminal_address(t) or "",
            "state": virt.domain_state(conn, t.domain) if conn is not None else (
                "absent" if t.host == LOCAL else "unknown"),
            "verdict": r.get("name"),
            "seconds": r.get("seconds"),
            "booted_at": r.get("booted_at"),
            "checks": r.get("checks", []),
            "line": r.get("line"),
            "console_log": str(t.console_log),
            "proof": r.get("proof"),
        })
    return {"lab": plan.lab, "scenario": str(plan.scenario), "terminals": terminals}


def status(plan: LabPlan) -> dict[str, Any]:
    host = labhost.status(plan.netns)
    conn = virt.connect(plan.uri) if host.mode != "down" else None
    conns: dict[str, virt.Conn | None] = {LOCAL: conn}
    unreachable = {}
    for h in plan.hosts:
        if not h.remote or not plan.on(h):
            continue
        try:
            conns[h.name] = connect_host(h)
        except VirtError as err:
            unreachable[h.name] = err.detail
    out = report(plan, conns)
    out["host"] = host.describe()
    out["network"] = plan.network if conn and virt.network_active(conn, plan.network) else None
    out["nfs_server_pid"] = nfsserver.pid(plan)
    if unreachable:
        out["unreachable"] = unreachable
    return out


def all_ok(rep: dict[str, Any]) -> bool:
    return all(t["verdict"] == OK and all(c["ok"] for c in t.get("checks", []))
               for t in rep["terminals"])


# ---- down -----------------------------------------------------------------------------------


def down(plan: LabPlan, dirs: Dirs, say: Say) -> None:
    """Remove everything the lab created; safe to run any number of times."""
    with state.locked(plan.lab_dir, plan.lab):
        recorded = state.load(plan.lab_dir)
        on_host = {**{t.domain: t.host for t in plan.terminals}, **recorded.get("hosts", {})}
        left = down_other_hosts(plan, on_host, recorded.get("shipped", []), say)
        host = labhost.status(plan.netns)
        if host.mode != "down":
            conn = virt.connect(plan.uri)
            domains = sorted(d for d in {*recorded.get("domains", []), *on_host}
                             if on_host.get(d, LOCAL) == LOCAL)
            # libvirt waits for each QEMU to exit: destroy them side by side.
            with ThreadPoolExecutor(max_workers=min(8, len(domains))) as pool:
                gone = list(pool.map(lambda name: virt.destroy_domain(conn, name), domains))
            for name, destroyed in zip(domains, gone, strict=True):
                if destroyed:
                    say(f"destroyed domain {name}")
            if virt.destroy_network(conn, recorded.get("network", plan.network)):
                say(f"destroyed network {plan.network}")
        if nfsserver.pid(plan) is not None:
            say("stopped nfs-ganesha")
        nfsserver.stop(plan)
        if recorded.get("build_root"):
            for target in mounts.undo_build_mounts(Path(recorded["build_root"])):
                say(f"unmounted {target} (left by a vlab that was killed while building)")
        if recorded.get("image"):
            for done in nfsroot.release_image(Path(recorded["image"]),
                                              Path(recorded["image_mount"])):
                say(done)
        if nfsserver.stop_rpcbind_if_unused(dirs.state / RPCBIND_PID, _ganesha_pid_files(dirs)):
            say("stopped rpcbind")
        shutil.rmtree(plan.kernel_path.parent, ignore_errors=True)
        shutil.rmtree(plan.tftp_root, ignore_errors=True)
        (plan.lab_dir / "exports").unlink(missing_ok=True)
        for path in cache.sweep(dirs.cache):
            say(f"removed {path} (half-built by a vlab that was killed)")
        if left:  # the lab stays recorded until its other hosts are clean too
            state.save(plan.lab_dir, {k: v for k, v in recorded.items()
                                      if k in ("scenario", "lease", "placement")}
                       | {"status": "down-incomplete", "hosts": {
                           d: h for d, h in on_host.items() if h in left},
                          "shipped": sorted(left)})
            raise HostError("; ".join(f"host {h} does not answer ({why}); left there: {what}"
                                      for h, (why, what) in sorted(left.items()))
                            + f"; fix: run vlab down {plan.scenario} again once it answers")
        state.remove(plan.lab_dir)
        stop_host_if_unused(plan, dirs, say)


def down_other_hosts(plan: LabPlan, on_host: dict[str, str], shipped: list[str],
                     say: Say) -> dict[str, tuple[str, str]]:
    """Destroy the lab's domains on its other hosts and remove the files shipped there.
    Returns what is left on each host that did not answer: (why, what)."""
    left: dict[str, tuple[str, str]] = {}
    for h in plan.hosts:
        if not h.remote:
            continue
        domains = sorted(d for d, name in on_host.items() if name == h.name)
        if not domains and h.name not in shipped:
            continue
        try:
            conn = connect_host(h)
            for name in domains:
                if virt.destroy_domain(conn, name):
                    say(f"destroyed domain {name} on {h.name}")
            conn.close()
            with ship_session(h.name, h.uri, h.netns) as session:
                if session.remove_tree(str(h.files_dir)):
                    say(f"removed {h.files_dir} on {h.name}")
        except (VirtError, ship.ShipError) as err:
            what = ", ".join([*(f"domain {d}" for d in domains), f"folder {h.files_dir}"])
            say(f"host {h.name} does not answer: left there: {what}")
            left[h.name] = (err.detail if isinstance(err, VirtError) else str(err), what)
    return left


def stop_host_if_unused(plan: LabPlan, dirs: Dirs, say: Say) -> None:
    """The isolated host that `up` started on demand goes when no vlab lab uses it any more."""
    with state.machine_locked(dirs.state):  # not while another lab is coming up
        if not state.load(dirs.state, HOST_FILE).get("on_demand"):
            return
        if any((dirs.state / "labs").glob(f"*/{state.STATE}")):
            return  # another lab is up, or on its way up (its lease is recorded first)
        host = labhost.status(plan.netns)
        if host.mode == "isolated":
            domains, networks = virt.names(virt.connect(plan.uri), "vlab-")
            if domains or networks:
                return
        if host.mode != "system":
            host_down(plan.netns, dirs, say)


def host_down(netns: str, dirs: Dirs, say: Say) -> None:
    if labhost.status(netns).mode == "isolated" or labhost.netns_exists(netns):
        say(f"stopping the isolated lab host (namespace {netns})")
    labhost.stop(netns)
    state.remove(dirs.state, HOST_FILE)


def artifacts(plan: LabPlan) -> dict[str, str]:
    """Every text file vlab would write for this lab, the builder's config dir included."""
    files = render.all_artifacts(plan)
    if plan.builder is not InitrdBuilder.VLAB:
        del files["initrd/init"], files["initrd/udhcpc.sh"]
        confdir = builders.CONFDIR.format(builder=plan.builder.value)
        for rel, (text, _mode) in builders.config_files(plan).items():
            files[f"initrd/{plan.builder.value}/{rel}"] = text
        release = plan.kernel_version or "RELEASE"  # the root's newest kernel, found at up
        files["initrd/command"] = shlex.join(["chroot", str(plan.export_path),
                                              *builders.command(plan, release, confdir)]) + "\n"
    if plan.root_source is not RootSource.BUSYBOX:
        del files["root/sbin/init"]
    return files


# ---- pxe ------------------------------------------------------------------------------------


def pxe(scenario: Scenario, plan: LabPlan, dirs: Dirs, tftp_root: Path, say: Say) -> tftp.Changes:
    """Write the TFTP tree and site snippets for the scenario's physical hosts."""
    site = pxe_site.site_plan(scenario, plan)  # lint first: nothing is written on an error
    loaders = tftp.bootloaders()
    with state.locked(plan.lab_dir, plan.lab):
        build_nfs_root(plan, say)
        k, img = build_boot_files(plan, dirs, say)
    # pxelinux loads a bzImage: the PVH ELF is for direct kernel boot only.
    copies = {**loaders, pxe_site.KERNEL: k.vmlinuz, pxe_site.INITRD: img}
    changes = tftp.write_tree(tftp_root, pxe_site.shared_files(site), copies,
                              pxe_site.host_groups(site))
    say(f"TFTP tree {tftp_root}: {len(changes.written)} written, {len(changes.removed)} removed, "
        f"{changes.unchanged} unchanged ({len(site.hosts)} hosts)")
    return changes


def twins(plan: LabPlan, site: pxe_site.Site, sample: int = 4) -> tuple[TerminalPlan, ...]:
    """A virtual twin per physical host (a sample when there are many): its MAC, its fixed
    IP, booting from the network; and one more whose MAC has no file, which must boot
    through pxelinux.cfg/default."""
    macs = {h.mac for h in site.hosts}
    unknown = next(m for i in range(99) if (m := pinned_mac(plan.lab, "pxe-default", i))
                   not in macs)
    hosts = [(h.name, h.mac, h.ip, h.root_path) for h in site.hosts[:sample]]
    return tuple(TerminalPlan(
        name=f"pxe-{name}", domain=f"vlab-{plan.lab}-pxe-{name}", nic_model="virtio",
        mac=mac, ip=ip if ip and ipaddress.IPv4Address(ip) in plan.subnet else "",
        memory_mib=256, vcpus=1, root_server=site.server, root_path=site.export_path,
        dhcp_root_path=root_path, cmdline="",
        console_log=plan.lab_dir / "console" / f"pxe-{name}.log", boot="pxe",
    ) for name, mac, ip, root_path in [*hosts, ("default", unknown, None, None)])


def pxe_check(scenario: Scenario, plan: LabPlan, dirs: Dirs, tftp_root: Path,
              say: Say) -> dict[str, Any]:
    """Boot a virtual twin of every host through the very files vlab wrote; then tear down."""
    site = pxe_site.site_plan(scenario, plan)
    twin_plans = twins(plan, site)
    with state.locked(plan.lab_dir, plan.lab):
        state.update(plan.lab_dir, scenario=str(plan.scenario), status="pxe-check")
        netns = start_lab_host(plan, dirs, say)
        conn = virt.connect(plan.uri)
        say(f"network {plan.network}: TFTP from {tftp_root}, bootp pxelinux.0, IPv6 RAs")
        state.update(plan.lab_dir, network=plan.network)
        export_nfs_root(plan, dirs, netns, say)
        virt.start_network(conn, plan.network, render.network_xml(plan, tftp_root, twin_plans))
        wait_for_nfs_server(plan, say)
        pxe_plan = replace(plan, terminals=twin_plans)
        started = boot_terminals(pxe_plan, {LOCAL: conn}, say)
        verdicts = watch_consoles(pxe_plan, started, say)
        save_results(plan, started, verdicts)
        rep = report(pxe_plan, {LOCAL: conn})
    down(pxe_plan, dirs, say)
    return rep


def render_to(plan: LabPlan, out: Path) -> list[Path]:
    written = []
    for name, text in artifacts(plan).items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def host_down_all(netns: str, dirs: Dirs, say: Say) -> None:
    """`vlab host down`: every lab's terminals, networks and NFS servers, then the host."""
    if labhost.status(netns).mode == "isolated":
        conn = virt.connect("qemu:///system")
        domains, networks = virt.names(conn, "vlab-")
        for name in domains:
            virt.destroy_domain(conn, name)
            say(f"destroyed domain {name}")
        for name in networks:
            virt.destroy_network(conn, name)
            say(f"destroyed network {name}")
    for pid_file in _ganesha_pid_files(dirs):
        pid = procs.read_pid(pid_file)
        if pid is not None:
            procs.stop(pid)
            say(f"stopped nfs-ganesha of lab {pid_file.parent.parent.name}")
    if nfsserver.stop_rpcbind_if_unused(dirs.state / RPCBIND_PID, []):
        say("stopped rpcbind")
    host_down(netns, dirs, say)


def gc(dirs: Dirs, say: Say) -> list[str]:
    """`vlab gc`: remove what carries vlab's label but belongs to no lab with state.

    A lab's state goes only with `vlab down`; what outlives it (state deleted by hand, a
    state folder wiped) is found by its labels: domains by their vlab metadata, networks by
    their vlab- name, NFS servers by their lab folder in their command line, mounts by their
    place in a lab folder."""
    labs = dirs.state / "labs"
    live = {p.parent.name for p in labs.glob(f"*/{state.STATE}")}
    removed: list[str] = []

    def orphan(lab_name: str) -> bool:
        return lab_name not in live

    if labhost.status(NETNS).mode != "down":
        conn = virt.connect("qemu:///system")
        for name, owner in sorted(virt.labelled_domains(conn, render.METADATA_NS).items()):
            if orphan(owner) and virt.destroy_domain(conn, name):
                removed.append(f"domain {name} (lab {owner})")
        for name in virt.names(conn, "vlab-")[1]:
            if orphan(name.removeprefix("vlab-")) and virt.destroy_network(conn, name):
                removed.append(f"network {name}")
    for pid, cmd in sorted(procs.with_argument(str(labs) + "/").items()):
        owner = cmd.split(str(labs) + "/", 1)[1].split("/", 1)[0]
        if orphan(owner):
            procs.stop(pid)
            removed.append(f"process {pid} (lab {owner}): {cmd}")
    for point in mounts.mounted_under(labs):
        owner = point.relative_to(labs.resolve()).parts[0]
        if orphan(owner):
            mounts.umount(point)
            removed.append(f"mount {point}")
    if nfsserver.stop_rpcbind_if_unused(dirs.state / RPCBIND_PID, _ganesha_pid_files(dirs)):
        removed.append("rpcbind")
    removed += [f"half-built {p}" for p in cache.sweep(dirs.cache)]
    if not live and state.load(dirs.state, HOST_FILE).get("on_demand"):
        host_down(NETNS, dirs, say)
    for what in removed:
        say(f"removed {what}")
    return removed


def _ganesha_pid_files(dirs: Dirs) -> list[Path]:
    return sorted((dirs.state / "labs").glob("*/nfs/ganesha.pid"))
