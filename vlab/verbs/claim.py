"""A lab's plan on this machine, and its claim: the lease recorded before anything is made."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vlab import state
from vlab.artifacts import templates
from vlab.artifacts.catalog import lab_artifacts
from vlab.build import cache
from vlab.nodes import labhost
from vlab.nodes.reach import preflight
from vlab.plan.lab import Dirs, LabPlan
from vlab.plan.make import make_plan, place
from vlab.scenario.model import Scenario
from vlab.watch import sshkeys

# An ed25519 public key blob is always 68 base64 characters (sshkeys.lab_key).
KEY_STANDIN = "AAAAC3NzaC1lZDI1NTE5AAAAI" + "A" * 43


def plan_for(sc: Scenario, dirs: Dirs, free_mib: dict[str, int] | None = None, *,
             ssh_key: str = "", timeout: int | None = None, twins: bool = False) -> LabPlan:
    """The lab's plan on this machine: its recorded lease and placement (a lab that is up
    keeps its terminals where they are), or a lease clear of the other labs' and terminals
    placed by the nodes' free memory."""
    lab_dir = dirs.state / "labs" / sc.lab.name
    recorded = state.load(lab_dir).get("placement")
    taken = dataclasses.replace(state.taken(dirs.state, sc.lab.name),
                                routed=labhost.machine_networks())
    # A terminal the scenario gained since is placed as in a new lab; the others stay.
    return make_plan(sc, dirs, taken,
                     state.recorded_attempt(lab_dir),
                     place(sc, free_mib, recorded if isinstance(recorded, dict) else None),
                     ssh_key=ssh_key, timeout=timeout, twins=twins)


def validated(files: dict[str, str], cache_dir: Path | None) -> None:
    """Every XML document of a lab's artifacts checked against libvirt's schema
    (templates.validate). With a cache folder, once per text and schema: a passed check is
    remembered there, which keeps lxml and the compiled schema (~16 ms, ~5 MiB) out of a
    warm `vlab up`."""
    stamps: dict[str, str] = {}
    for name, text in files.items():
        kind = templates.xml_kind(name)
        if kind is None:
            continue
        if cache_dir is None:
            templates.validate(text, kind)
            continue
        stamp = stamps.setdefault(kind, templates.schema_stamp(kind))
        mark = cache_dir / "checked" / cache.key(kind, stamp, text)
        if mark.exists():
            continue
        templates.validate(text, kind)
        try:
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.touch()
        except OSError:
            pass  # a cache vlab cannot write to only costs the check next time


def claim(sc: Scenario, dirs: Dirs, *, timeout: int | None = None,
          twins: bool = False) -> LabPlan:
    """The plan of a lab about to be built; its lease and where each terminal runs are
    recorded before anything is made."""
    free = preflight(sc)  # bad input: nothing created, not even the lease
    # Every artifact rendered and checked first, with a key as long as the lab's will be:
    # a value that only shows in a rendered file is exit 2 with nothing made either.
    validated(lab_artifacts(plan_for(sc, dirs, free, ssh_key=KEY_STANDIN,
                                timeout=timeout, twins=twins)), dirs.cache)
    with state.all_labs_locked(dirs.state):
        lab_dir = dirs.state / "labs" / sc.lab.name
        plan = plan_for(sc, dirs, free, timeout=timeout, twins=twins)
        # Not while another vlab works on this lab (LabBusy): that one's state is its own.
        with state.locked(plan.lab_dir, plan.name):
            recorded = state.load(lab_dir).get("placement")
            state.update(plan.lab_dir, scenario=str(plan.scenario),
                         lease=state.lease_of(plan),
                         placement={**(recorded if isinstance(recorded, dict) else {}),
                                    **{t.name: t.node for t in plan.terminals}})
    key = sshkeys.lab_key(plan.lab_dir / "ssh")
    return plan_for(sc, dirs, free, ssh_key=key, timeout=timeout, twins=twins)
