"""The processes of a machine the tests simulate (simhost.py, workstation.py): every process
in its mount namespace, whose id `pids.json` in its folder records; killed all at its stop."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path


def pids(workdir: Path) -> list[int]:
    """Every process in the simulated machine's mount namespace: its daemons and children."""
    try:
        ns = json.loads((workdir / "pids.json").read_text())["mnt"]
    except (OSError, ValueError, KeyError):
        return []
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/mnt") == ns:
                found.append(int(pid))
    return found


def kill_all(workdir: Path, wait: float = 10) -> None:
    """SIGKILL every one of them, and wait (at most `wait` s) until none runs (a zombie
    whose parent has not reaped it yet does not run)."""
    for pid in pids(workdir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    deadline = time.monotonic() + wait
    while [p for p in pids(workdir) if not _zombie(p)] and time.monotonic() < deadline:
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True  # gone
