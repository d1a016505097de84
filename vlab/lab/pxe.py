"""`vlab pxe`: the TFTP tree and site snippets for the scenario's physical machines, and
`--check`: a virtual twin of each boots through the very files written."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from vlab import pxe, render, state, tftp, virt
from vlab.errors import UsageError
from vlab.lab.down import down
from vlab.lab.status import report
from vlab.lab.up import (
    boot_terminals,
    build_boot_files,
    build_nfs_root,
    check_firmware,
    create_terminals,
    export_nfs_root,
    grub_dir,
    guard_lab,
    join_lab_network,
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
    # Lint first: nothing is written on an error, and no loader is missing.
    site = pxe.site_plan(scenario, plan, grub_dir=grub_dir(scenario.pxe.machines))
    tftp.bootloaders()
    with state.locked(plan.lab_dir, plan.lab):
        build_nfs_root(plan, dirs, say)
        k, img = build_boot_files(plan, dirs, say)
    changes = write_tftp_tree(scenario, tftp_root, site, k, img)
    say(f"TFTP tree {tftp_root}: {len(changes.written)} written, {len(changes.removed)} removed, "
        f"{changes.unchanged} unchanged ({len(site.machines)} hosts)")
    return changes


def refuse_check(scenario: Scenario, dirs: Dirs, tftp_root: Path) -> None:
    """Before anything is made for a check: the lab is not up (its twins would take its
    place and their teardown its network and NFS server), and the twins' DHCP and TFTP
    server (dnsmasq, an unprivileged user) can reach the tree."""
    lab_dir = dirs.state / "labs" / scenario.lab.name
    status = state.load(lab_dir).get("status")
    if (lab_dir / state.STATE).exists() and status != "pxe-check":
        raise UsageError(f"lab {scenario.lab.name} is {status or 'recorded'} (vlab up); "
                         "vlab pxe --check boots its twins as that lab and would take its "
                         f"place; fix: vlab down {scenario.path} first, or check from a copy "
                         "of the scenario with another [lab] name")
    folder = tftp_root.absolute()
    for d in [folder, *folder.parents]:
        if d.exists() and not d.stat().st_mode & 0o001:
            raise UsageError(f"--tftp-root {tftp_root}: {d} is mode {d.stat().st_mode & 0o7777:o}"
                             ", so the twins' TFTP server (dnsmasq, running unprivileged) "
                             f"cannot reach the tree; fix: chmod o+x {d}, or give a --tftp-root "
                             "in folders others may traverse")


def check(twins: LabPlan, dirs: Dirs, tftp_root: Path, say: Say) -> dict[str, Any]:
    """Boot the twins (a plan made with twins=True) through the tree; then tear down,
    whatever happened (a twin is a check, not a lab to look at)."""
    try:
        rep = _boot_twins(twins, dirs, tftp_root, say)
    except BaseException:
        with contextlib.suppress(Exception):
            down(twins, dirs, say)
        raise
    down(twins, dirs, say)
    return rep


def _boot_twins(twins: LabPlan, dirs: Dirs, tftp_root: Path, say: Say) -> dict[str, Any]:
    check_firmware(twins)
    with state.locked(twins.lab_dir, twins.lab):
        state.update(twins.lab_dir, scenario=str(twins.scenario), status="pxe-check")
        netns = start_lab_host(twins, dirs, say)
        conn = virt.connect(twins.uri)
        try:
            say(f"network {twins.network}: TFTP from {tftp_root}, bootp pxelinux.0, IPv6 RAs")
            if twins.stand_in:
                say(f"twins: their files name your NFS server {twins.stand_in} ([pxe] "
                    f"nfs_server); in the lab, vlab's own server answers at {twins.stand_in} "
                    f"with the same tree at the same path {twins.export_path}, so the check "
                    "proves the files, loaders, kernel, initrd and the mount they name, not "
                    "your server's exports (vlab-site/exports is that line)")
            state.update(twins.lab_dir, network=twins.network)
            guard_lab(twins, netns, ipv6=True)  # before anything of it answers
            export_nfs_root(twins, dirs, netns, say)
            twins.dnsmasq_log.parent.mkdir(parents=True, exist_ok=True)
            twins.dnsmasq_log.unlink(missing_ok=True)
            virt.start_network(conn, twins.network, render.network_xml(twins, tftp_root))
            join_lab_network(twins, netns)
            create_terminals(twins, {LOCAL: conn})
            wait_for_nfs_server(twins, say)
            started = boot_terminals(twins, {LOCAL: conn}, say)
            verdicts = watch_consoles(twins, {LOCAL: conn}, started, say, tftp_root)
            save_results(twins, started, verdicts)
            return report(twins, {LOCAL: conn})
        finally:
            virt.close(conn)

