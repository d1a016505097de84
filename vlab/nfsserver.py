"""The embedded NFS server: one nfs-ganesha (FSAL VFS, NFSv4) per lab, in the lab host's
namespace, exporting the root read-only to the lab subnet only."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from vlab import procs, render, run
from vlab.errors import HostError, MissingTool
from vlab.plan import LabPlan

GANESHA = "ganesha.nfsd"
FSAL_VFS = Path("/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so")
# Log lines that are noise without dbus or Kerberos, which vlab does not use.
HARMLESS = ("DBUS", "krb5", "keytab", "credentials for principal", "on UDP")


def _files(plan: LabPlan) -> tuple[Path, Path, Path]:
    d = plan.nfs_server_dir
    return d / "ganesha.conf", d / "ganesha.pid", d / "ganesha.log"


def pid(plan: LabPlan) -> int | None:
    return procs.read_pid(_files(plan)[1])


def start(plan: LabPlan, netns: str | None) -> int:
    """Start (or keep) the lab's ganesha; return once it listens on the lab's NFS port."""
    if run.which(GANESHA) is None:
        raise MissingTool(GANESHA, "nfs-ganesha")
    if not FSAL_VFS.exists():
        raise MissingTool(f"ganesha's VFS backend ({FSAL_VFS})", "nfs-ganesha-vfs")
    conf, pid_file, log_file = _files(plan)
    running = procs.read_pid(pid_file)
    if running is not None:
        return running
    (plan.nfs_server_dir / "recovery").mkdir(parents=True, exist_ok=True)
    conf.write_text(render.ganesha_conf(plan))
    log_file.write_text("")
    run.daemon([GANESHA, "-f", str(conf), "-L", str(log_file), "-p", str(pid_file),
                "-N", "NIV_EVENT"], netns=netns, log_file=plan.nfs_server_dir / "stdout.log")
    started = time.monotonic()
    while True:
        server = procs.read_pid(pid_file)
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


def stop(plan: LabPlan) -> None:
    server = pid(plan)
    if server is not None:
        procs.stop(server)
    shutil.rmtree(plan.nfs_server_dir, ignore_errors=True)
