"""`vlab pxe`: the TFTP tree and site snippets for the scenario's physical machines, and
`--check`: a virtual twin of each boots through the very files written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlab import pxe, render, state, tftp, virt
from vlab.lab.down import down
from vlab.lab.status import report
from vlab.lab.up import (
    boot_terminals,
    build_boot_files,
    build_nfs_root,
    export_nfs_root,
    save_results,
    start_lab_host,
    wait_for_nfs_server,
    watch_consoles,
    write_tftp_tree,
)
from vlab.plan import Dirs, LabPlan
from vlab.progress import Say
from vlab.scenario.model import LOCAL, Scenario


def write(scenario: Scenario, plan: LabPlan, dirs: Dirs, tftp_root: Path,
          say: Say) -> tftp.Changes:
    """Write the TFTP tree and site snippets for the scenario's physical machines."""
    site = pxe.site_plan(scenario, plan)  # lint first: nothing is written on an error
    tftp.bootloaders()  # ...and no loader missing
    with state.locked(plan.lab_dir, plan.lab):
        build_nfs_root(plan, say)
        k, img = build_boot_files(plan, dirs, say)
    changes = write_tftp_tree(tftp_root, site, k, img)
    say(f"TFTP tree {tftp_root}: {len(changes.written)} written, {len(changes.removed)} removed, "
        f"{changes.unchanged} unchanged ({len(site.machines)} hosts)")
    return changes


def check(twins: LabPlan, dirs: Dirs, tftp_root: Path, say: Say) -> dict[str, Any]:
    """Boot the twins (a plan made with twins=True) through the tree; then tear down."""
    with state.locked(twins.lab_dir, twins.lab):
        state.update(twins.lab_dir, scenario=str(twins.scenario), status="pxe-check")
        netns = start_lab_host(twins, dirs, say)
        conn = virt.connect(twins.uri)
        say(f"network {twins.network}: TFTP from {tftp_root}, bootp pxelinux.0, IPv6 RAs")
        state.update(twins.lab_dir, network=twins.network)
        export_nfs_root(twins, dirs, netns)
        virt.start_network(conn, twins.network, render.network_xml(twins, tftp_root))
        wait_for_nfs_server(twins, say)
        started = boot_terminals(twins, {LOCAL: conn}, say)
        verdicts = watch_consoles(twins, {LOCAL: conn}, started, say)
        save_results(twins, started, verdicts)
        rep = report(twins, {LOCAL: conn})
    down(twins, dirs, say)
    return rep

