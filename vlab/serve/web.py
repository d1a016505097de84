"""The PXE twins' web server: a real lighttpd (Debian's), serving the tree `vlab pxe` wrote
to the twins that fetch over HTTP (UEFI HTTP boot, iPXE), on the lab network only, confined
like the lab's NFS server (vlab/serve/confine.py, `--caps web`)."""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import time
from pathlib import Path

from vlab import procs, run
from vlab.artifacts import templates
from vlab.artifacts.pxe_config import WEB_SNIPPET
from vlab.errors import HostError, MissingTool
from vlab.plan.lab import LabPlan
from vlab.scenario.model import Netboot

LIGHTTPD = "lighttpd"
PORT = 80
USER = "www-data"
LOGS = ("access.log", "error.log")


def needed(plan: LabPlan) -> bool:
    """Does a terminal of the lab fetch over HTTP?"""
    return any(t.netboot is not Netboot.TFTP for t in plan.terminals)


def _files(plan: LabPlan) -> tuple[Path, Path, Path]:
    folder = plan.lab_dir / "web"
    return folder, folder / "lighttpd.conf", folder / "lighttpd.pid"


def access_log(plan: LabPlan) -> Path:
    """What the lab's lighttpd served, and refused, while it runs."""
    return _files(plan)[0] / "access.log"


def pid(plan: LabPlan) -> int | None:
    """The lab's lighttpd, if the pid file's process is still it."""
    _folder, conf, pid_file = _files(plan)
    return procs.read_pid(pid_file, LIGHTTPD, str(conf))


def start(plan: LabPlan, netns: str | None, tree: Path) -> int:
    """Start (or keep) the lab's lighttpd serving `tree`, once the lab network is up (it
    listens on the network's address); its pid, once it listens."""
    if run.which(LIGHTTPD) is None:
        raise MissingTool(LIGHTTPD, "lighttpd")
    folder, conf, pid_file = _files(plan)
    running = pid(plan)
    if running is not None:
        return running
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty").mkdir(exist_ok=True)  # its document root: the tree is at http_path only
    # lighttpd opens its logs as its user: theirs, and nothing else of the folder.
    user = pwd.getpwnam(USER)
    for log in LOGS:
        (folder / log).touch()
        os.chown(folder / log, user.pw_uid, user.pw_gid)
    conf.write_text(templates.template(
        "pxe/lighttpd-lab.conf.j2", address=plan.gateway, folder=folder, user=USER,
        tree=str(tree.absolute()).rstrip("/") + "/", snippet=WEB_SNIPPET))
    # -D: in the foreground, process 1 of its PID namespace; confine writes its pid.
    argv = [sys.executable, "-m", "vlab.serve.confine", "--pid-file", str(pid_file),
            "--caps", "web", str(folder), "", str(tree.absolute()), "--",
            LIGHTTPD, "-D", "-f", str(conf)]
    run.daemon(argv, netns=netns, log_file=folder / "stdout.log")
    started = time.monotonic()
    while True:
        server = pid(plan)
        if server is not None and procs.listening(server, PORT):
            return server
        if time.monotonic() - started > 10:
            raise HostError(f"lighttpd did not start serving {tree} within 10 s; see "
                            f"{folder / 'error.log'} and {folder / 'stdout.log'}")
        time.sleep(0.05)


def stop(plan: LabPlan) -> bool:
    """Stop the lab's lighttpd and remove its folder (its logs kept beside the consoles);
    True if it ran. Never fails on what is not there."""
    folder, _conf, pid_file = _files(plan)
    server = pid(plan)
    pid_file.unlink(missing_ok=True)  # first: its watcher writes no end time (confine.py)
    if server is not None:
        procs.stop(server)
    for log in (*LOGS, "stdout.log"):
        if (folder / log).is_file():
            kept = plan.lab_dir / "console" / f"web-{log}"
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_bytes((folder / log).read_bytes())
    shutil.rmtree(folder, ignore_errors=True)
    return server is not None
