"""What vlab has created for a lab, recorded before it is created, and the per-lab lock."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlab.errors import LabBusy
from vlab.plan.lab import LabPlan
from vlab.plan.lease import Taken

STATE = "state.json"
RESULTS = "results.json"
HOST_FILE = "host.json"  # in the state folder: the isolated lab host, when up started it


def load(lab_dir: Path, name: str = STATE) -> dict[str, Any]:
    try:
        data = json.loads((lab_dir / name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(lab_dir: Path, data: dict[str, Any], name: str = STATE) -> None:
    """Replace the file whole: a reader sees the old or the new one, never half of one."""
    lab_dir.mkdir(parents=True, exist_ok=True)
    tmp = lab_dir / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"  # one per writer
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, lab_dir / name)
    except BaseException:  # a full disk, Ctrl-C: no half-written file left behind
        tmp.unlink(missing_ok=True)
        raise


def update(lab_dir: Path, **changes: Any) -> dict[str, Any]:
    """Read, change and write the lab's state as one step, also against other processes (a
    second vlab up on the same lab records its lease while the first records what it made)."""
    lab_dir.mkdir(parents=True, exist_ok=True)
    with (lab_dir / f".{STATE}.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        data = load(lab_dir)
        data.update(changes)
        save(lab_dir, data)
    return data


def remove(lab_dir: Path, name: str = STATE) -> None:
    (lab_dir / name).unlink(missing_ok=True)


@contextmanager
def locked(lab_dir: Path, lab: str) -> Iterator[None]:
    """One vlab process at a time works on a lab."""
    lab_dir.mkdir(parents=True, exist_ok=True)
    with (lab_dir / "lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabBusy(f"another vlab process is working on lab {lab!r}; "
                          "fix: wait for it to finish") from None
        yield


@contextmanager
def all_labs_locked(state_dir: Path) -> Iterator[None]:
    """Labs pick their subnets and ports one at a time (blocking: it is quick)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "leases.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def lease_of(plan: LabPlan) -> dict[str, Any]:
    return {"attempt": plan.attempt, "subnet": str(plan.subnet), "nfs_port": plan.nfs_port,
            "mount_port": plan.mount_port, "bridge": plan.bridge,
            "macs": [t.mac for t in plan.terminals],
            "domains": [t.domain for t in plan.terminals]}


def recorded_attempt(lab_dir: Path) -> int | None:
    attempt = load(lab_dir).get("lease", {}).get("attempt")
    return attempt if isinstance(attempt, int) else None


def taken(state_dir: Path, but: str) -> Taken:
    """The leases of every other lab that has state (is up, or was not taken down)."""
    subnets: set[str] = set()
    ports: set[int] = set()
    bridges: set[str] = set()
    macs: set[str] = set()
    domains: set[str] = set()
    by: dict[str, str] = {}
    for path in sorted((state_dir / "labs").glob(f"*/{STATE}")):
        if path.parent.name == but:
            continue
        lease = load(path.parent).get("lease")
        if not isinstance(lease, dict):
            continue
        subnets.add(str(lease.get("subnet")))
        ports.update(int(lease.get(k, 0)) for k in ("nfs_port", "mount_port"))
        bridges.add(str(lease.get("bridge")))
        macs.update(str(m) for m in lease.get("macs", []))
        for domain in map(str, lease.get("domains", [])):
            domains.add(domain)
            by[domain] = path.parent.name
        by[str(lease.get("subnet"))] = path.parent.name
    return Taken(frozenset(subnets), frozenset(ports), frozenset(bridges), frozenset(macs),
                 frozenset(domains), by)
