"""The embedded NFS server: one nfs-ganesha (FSAL VFS, NFSv4 or v3+v4) per lab, exporting the
root read-only to the lab subnet only. It runs in a network namespace of its own, joined to
the lab bridge by a veth pair, on a site's ports (2049; for NFSv3 mountd and an rpcbind of its
own on 111), so nothing of it is reachable but from the lab network; a lab with other
hypervisor hosts keeps it in the lab host's namespace on ports of its own."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

from vlab import procs, run, state
from vlab.artifacts import templates
from vlab.errors import HostError, MissingTool, ScenarioError
from vlab.nodes import labhost
from vlab.plan.lab import NFS_NETNS_PREFIX, LabPlan
from vlab.scenario.model import InitrdBuilder, NfsVersion
from vlab.serve import confine

GANESHA = "ganesha.nfsd"
FSAL_VFS = Path("/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so")
# Log lines that are noise without dbus or Kerberos, which vlab does not use.
HARMLESS = ("DBUS", "krb5", "keytab", "credentials for principal", "on UDP")


# Linux 6.6 turned READ_PLUS on for NFSv4.2 (commit 9cf2744d); nfs-ganesha before 6.2 answers
# it wrongly, and the client reads every file as EIO (nfs-ganesha issue #1188).
READ_PLUS_LINUX = (6, 6)


def refuse_broken_reads(plan: LabPlan, release: str) -> None:
    """An NFSv4.2 lab whose terminals run Linux 6.6 or newer would mount its root and then fail
    every exec: refused before anything boots, with the fix."""
    m = re.match(r"(\d+)\.(\d+)", release)
    # "4" lets mount.nfs (dracut's) pick the newest minor version, 4.2; the kernel's own
    # mount (vlab's initrd) takes it as 4.0.
    negotiates = plan.builder is InitrdBuilder.DRACUT and plan.nfs_version is NfsVersion.V4
    if not (plan.nfs_version is NfsVersion.V4_2 or negotiates) or not m:
        return
    if (int(m.group(1)), int(m.group(2))) >= READ_PLUS_LINUX:
        raise ScenarioError(plan.scenario, "lab.nfs_version",
                            f'"{plan.nfs_version.value}" with the terminals\' Linux {release}: '
                            "from 6.6 on it reads through NFSv4.2 READ_PLUS ("
                            + ("dracut's mount.nfs picks 4.2 for \"4\", " if negotiates else "")
                            + "which the lab's nfs-ganesha 4.3 answers wrongly: every read is "
                            "EIO; nfs-ganesha issue #1188)",
                            'use nfs_version = "4.1" (the default)')


def _files(plan: LabPlan) -> tuple[Path, Path, Path]:
    d = plan.nfs_server_dir
    return d / "ganesha.conf", d / "ganesha.pid", d / "ganesha.log"


RPCBIND_SOCK = Path("/run/rpcbind.sock")
LINK = "eth0"  # the server's end of the veth pair, in its own namespace
RPCBIND_PID = "rpcbind.pid"  # in the state folder: the rpcbind vlab started, if it did


def _rpcbind_answers() -> bool:
    return procs.socket_answers(RPCBIND_SOCK)


def ensure_rpcbind(netns: str | None, pid_file: Path) -> None:
    """NFSv3 makes ganesha register with rpcbind (one per machine: its socket is global)."""
    if _rpcbind_answers():
        return
    if run.which("rpcbind") is None:
        raise MissingTool("rpcbind (needed for nfs_version = \"3\")", "rpcbind")
    # -f: stay in the foreground, so the pid vlab records is rpcbind's own.
    pid = run.spawn(["rpcbind", "-f", "-w"], netns=netns, log_file=pid_file.with_suffix(".log"))
    pid_file.write_text(f"{pid}\n")
    started = time.monotonic()
    while not _rpcbind_answers():
        if time.monotonic() - started > 10:
            raise HostError("rpcbind did not answer on /run/rpcbind.sock within 10 s")
        time.sleep(0.05)


def pid_files(state_dir: Path) -> list[Path]:
    """Where every lab's nfs-ganesha writes its pid (running, starting or not)."""
    return sorted(p.with_name("ganesha.pid")
                  for p in (state_dir / "labs").glob("*/nfs/ganesha.conf"))


def _needs_rpcbind(conf: Path) -> bool:
    """An NFSv3 server in the lab host's namespace (one in its own has its own rpcbind)."""
    if conf.with_name("run").is_dir():
        return False
    try:
        return "Protocols = 3" in conf.read_text()
    except OSError:
        return False


def stop_rpcbind_if_unused(state_dir: Path) -> bool:
    """Stop the rpcbind vlab started once no lab has an NFSv3 server: none runs, and none is
    starting (its configuration is written, under the machine lock, before it asks for
    rpcbind; a lab coming up while another goes down keeps the rpcbind it registered with)."""
    with state.all_labs_locked(state_dir):
        pid_file = state_dir / RPCBIND_PID
        rpcbind = procs.read_pid(pid_file, "rpcbind")
        if rpcbind is None or any(
                _needs_rpcbind(p.with_name("ganesha.conf"))
                and (not p.exists() or server_pid(p) is not None) for p in pid_files(state_dir)):
            return False
        procs.stop(rpcbind)
        pid_file.unlink(missing_ok=True)
        return True


def _ip(netns: str | None) -> list[str]:
    return ["ip", "-n", netns] if netns else ["ip"]


def make_namespace(plan: LabPlan, host_netns: str | None) -> None:
    """The server's namespace with its end of a veth pair at the lab's NFS address; the
    other end waits in the lab host's namespace for join_bridge(). Again after a kill: the
    pair is made anew, the server's end at the lab's pinned server MAC."""
    ns = plan.nfs_netns
    assert ns is not None
    if not (labhost.NETNS_DIR / ns).exists():
        run.run(["ip", "netns", "add", ns])
    run.run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run.run([*_ip(host_netns), "link", "del", plan.nfs_link], check=False)
    run.run([*_ip(host_netns), "link", "add", plan.nfs_link, "type", "veth", "peer", "name",
             LINK, "address", plan.nfs_mac, "netns", ns])
    run.run(["ip", "-n", ns, "addr", "add", f"{plan.nfs_address}/{plan.subnet.prefixlen}",
             "dev", LINK])
    if plan.ipv6:  # nodad: the lab's prefix is the lab's own, and DAD would hold it ~1 s
        run.run(["ip", "-n", ns, "addr", "add", f"{plan.nfs_address6}/64", "dev", LINK,
                 "nodad"])
    if plan.stand_in:  # the site's server's address, which exists only in this namespace
        run.run(["ip", "-n", ns, "addr", "add", f"{plan.stand_in}/32", "dev", LINK])
    run.run(["ip", "-n", ns, "link", "set", LINK, "up"])


def join_bridge(plan: LabPlan, host_netns: str | None) -> None:
    """Put the server on the lab network (once libvirt made its bridge)."""
    run.run([*_ip(host_netns), "link", "set", plan.nfs_link, "master", plan.bridge, "up"])


def _netns_id(ns: str) -> str | None:
    """The namespace as /proc/PID/ns/net names it ("net:[INODE]"), None if there is none."""
    try:
        return f"net:[{os.stat(labhost.NETNS_DIR / ns).st_ino}]"
    except OSError:
        return None


def remove_namespace(ns: str) -> bool:
    """The server's namespace and the veth pair with it, after whatever still runs in it (a
    ganesha or rpcbind whose pid file a kill left unwritten): a namespace only vlab makes."""
    inside = _netns_id(ns)
    if not ns.startswith(NFS_NETNS_PREFIX) or inside is None:
        return False
    for entry in filter(str.isdigit, os.listdir("/proc")):
        if procs.netns_of(int(entry)) == inside:
            procs.stop(int(entry))
    run.run(["ip", "netns", "del", ns])
    return True


def of_another_state(ns: str, labs: Path) -> bool:
    """Does the namespace hold an nfs-ganesha whose lab folder is not under `labs` (a lab of
    another VLAB_STATE_DIR on this machine, which a gc of this one must leave alone)?"""
    inside = _netns_id(ns)
    return inside is not None and any(
        procs.netns_of(pid) == inside and f" {labs}/" not in f" {cmd}"
        for pid, cmd in procs.with_argument("/", GANESHA).items())


def namespaces() -> list[str]:
    """Every lab's server namespace on this machine."""
    if not labhost.NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in labhost.NETNS_DIR.glob(f"{NFS_NETNS_PREFIX}*"))


def _private_run(run_dir: Path, argv: list[str]) -> list[str]:
    """argv in a mount namespace of its own whose /run is run_dir: the lab's rpcbind and its
    ganesha meet on run_dir/rpcbind.sock, which no other rpcbind (the machine's, another
    lab's) shares. (rpcbind's socket is a path, not tied to a network namespace.)"""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$0" /run && exec "$@"', str(run_dir), *argv]


def _confined(plan: LabPlan, argv: list[str], run_dir: Path | None,
              image: Path | None) -> list[str]:
    """ganesha in mount and PID namespaces of its own (vlab/serve/confine.py), with the capabilities
    it needs only: the export's image (if any, vlab/serve/exportfs.py) mounted read-only over the
    root's path, so that no file handle reaches beyond it; the lab's /run; every mount
    read-only but its own folder."""
    return [sys.executable, "-m", "vlab.serve.confine", "--pid-file", str(_files(plan)[1]),
            *(["--image", str(image)] if image is not None else []),
            str(plan.nfs_server_dir), str(run_dir or ""), str(plan.export_path), "--", *argv]


def _start_own_rpcbind(plan: LabPlan, run_dir: Path) -> None:
    if run.which("rpcbind") is None:
        raise MissingTool("rpcbind (needed for nfs_version = \"3\")", "rpcbind")
    pid_file = plan.nfs_server_dir / RPCBIND_PID
    if procs.read_pid(pid_file, "rpcbind") is not None:
        return
    # -f: in the foreground, so the pid is rpcbind's own (ip, unshare and sh exec it).
    pid = run.spawn(_private_run(run_dir, ["rpcbind", "-f", "-w"]), netns=plan.nfs_netns,
                    log_file=plan.nfs_server_dir / "rpcbind.log")
    pid_file.write_text(f"{pid}\n")
    started = time.monotonic()
    while not procs.socket_answers(run_dir / RPCBIND_SOCK.name):
        if time.monotonic() - started > 10 or not procs.alive(pid):
            raise HostError(f"the lab's rpcbind did not answer within 10 s; see "
                            f"{plan.nfs_server_dir / 'rpcbind.log'}")
        time.sleep(0.05)


def pid(plan: LabPlan) -> int | None:
    return server_pid(_files(plan)[1])


def server_pid(pid_file: Path) -> int | None:
    """The lab's ganesha, if the pid file's process is still it (started with its conf)."""
    return procs.read_pid(pid_file, GANESHA, str(pid_file.with_name("ganesha.conf")))


def start(plan: LabPlan, netns: str | None, state_dir: Path, image: Path | None) -> None:
    """Start (or keep) the lab's ganesha, serving `image` (the export's own filesystem,
    vlab/serve/exportfs.py) or the root itself (an image root); wait_ready() says when it
    listens. (It listens on every address of its namespace, so it can start while the
    network is being defined.)"""
    if run.which(GANESHA) is None:
        raise MissingTool(GANESHA, "nfs-ganesha")
    if not FSAL_VFS.exists():
        raise MissingTool(f"ganesha's VFS backend ({FSAL_VFS})", "nfs-ganesha-vfs")
    conf, pid_file, log_file = _files(plan)
    if server_pid(pid_file) is not None:
        return
    confine.ended_file(pid_file).unlink(missing_ok=True)  # of the server this one replaces
    (plan.nfs_server_dir / "recovery").mkdir(parents=True, exist_ok=True)
    # In the foreground of a PID namespace of its own (vlab.confine), where it is process 1
    # and writes 1 into its own pid file; confine writes the pid vlab follows it by.
    argv = [GANESHA, "-F", "-f", str(conf), "-L", str(log_file),
            "-p", str(pid_file.with_name("ganesha.own.pid")), "-N", "NIV_EVENT"]
    if plan.nfs_netns is not None:
        run_dir = plan.nfs_server_dir / "run"
        run_dir.mkdir(mode=0o755, exist_ok=True)
        conf.write_text(templates.ganesha_conf(plan))
        if plan.nfs_version is NfsVersion.V3:
            _start_own_rpcbind(plan, run_dir)
        argv, netns = _confined(plan, argv, run_dir, image), plan.nfs_netns
    else:
        with state.all_labs_locked(state_dir):  # no other lab's down stops rpcbind meanwhile
            conf.write_text(templates.ganesha_conf(plan))
            if plan.nfs_version is NfsVersion.V3:
                ensure_rpcbind(netns, state_dir / RPCBIND_PID)
        argv = _confined(plan, argv, None, image)
    log_file.write_text("")
    run.daemon(argv, netns=netns, log_file=plan.nfs_server_dir / "stdout.log")


def wait_ready(plan: LabPlan) -> int:
    """The pid of the lab's ganesha, once it listens on the lab's NFS port."""
    _conf, pid_file, log_file = _files(plan)
    started = time.monotonic()
    while True:
        server = server_pid(pid_file)
        if server is not None and procs.listening(server, plan.nfs_port):
            return server
        waited = time.monotonic() - started
        if waited > 20 or (server is None and waited > 3):
            raise HostError(f"nfs-ganesha did not start: {fatal_lines(log_file) or 'no log'}"
                            f"\n  full log: {log_file}")
        time.sleep(0.05)


def fatal_lines(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    bad = [ln for ln in lines if any(f":{lvl} :" in ln for lvl in ("FATAL", "MAJ", "CRIT"))
           and not any(h in ln for h in HARMLESS)]
    return "\n  ".join(bad[-5:])


def ended(plan: LabPlan) -> float | None:
    """When the lab's ganesha ended (epoch seconds), if it was not vlab that stopped it and
    none runs now (its watcher wrote it, vlab/serve/confine.py)."""
    pid_file = _files(plan)[1]
    if server_pid(pid_file) is not None:
        return None
    try:
        return float(confine.ended_file(pid_file).read_text())
    except (OSError, ValueError):
        return None


def stop(plan: LabPlan) -> None:
    server = pid(plan)
    _files(plan)[1].unlink(missing_ok=True)  # first: its watcher writes no end time
    if server is not None:
        procs.stop(server)
    own_rpcbind = procs.read_pid(plan.nfs_server_dir / RPCBIND_PID, "rpcbind")
    if own_rpcbind is not None:
        procs.stop(own_rpcbind)
    # Keep the last log beside the console logs: it explains a failed mount after the fact.
    log_file = _files(plan)[2]
    if log_file.is_file():
        kept = plan.lab_dir / "console" / "ganesha.log"
        kept.parent.mkdir(parents=True, exist_ok=True)  # an up that failed before any boot
        shutil.copyfile(log_file, kept)
    shutil.rmtree(plan.nfs_server_dir, ignore_errors=True)


def clients(plan: LabPlan) -> set[str]:
    """The addresses the lab's NFS server holds a TCP connection from, as its kernel says
    (what the server saw of a terminal that hung)."""
    found = run.run(["ss", "-Htn", "state", "established", f"( sport = :{plan.nfs_port} )"],
                    netns=plan.nfs_netns, check=False)
    peers = set()
    for line in found.stdout.splitlines():
        words = line.split()
        if len(words) >= 4:
            peer = words[3].rpartition(":")[0].strip("[]")
            peers.add(peer.removeprefix("::ffff:"))
    return peers
