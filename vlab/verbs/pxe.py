"""`vlab pxe`: the TFTP tree and site snippets for the scenario's physical machines, and
`--twins`: a virtual twin of each boots through the very files written, in the same sequence
as `vlab up` boots a lab."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from vlab import state
from vlab.artifacts import pxe_config
from vlab.errors import UsageError
from vlab.plan.lab import Dirs, LabPlan
from vlab.progress import Say
from vlab.report.status import status
from vlab.scenario.model import Firmware, Netboot, Scenario
from vlab.serve import tftp
from vlab.verbs.down import down
from vlab.verbs.up import (
    boot,
    build_boot_files,
    build_nfs_root,
    check_firmware,
    connected,
    save_results,
    start_lab_host,
    write_tftp_tree,
)


def pxe(plan: LabPlan, dirs: Dirs, tftp_dir: Path, say: Say, *, write: bool = True,
        twins: bool = False) -> tuple[tftp.Changes, dict[str, Any] | None]:
    """Build the root, kernel and initrd; write the tree (unless not `write`); boot the twins
    through it when `twins` (a plan made with twins=True), then tear them down, whatever
    happened (a twin is a proof, not a lab to look at)."""
    assert plan.site is not None
    tftp.bootloaders()  # nothing is built when a loader is missing
    secure_ipxe = {m.firmware for m in plan.site.by(Netboot.IPXE)} & {Firmware.UEFI_SECURE}
    for path in tftp.ipxe_loaders(secure_ipxe).values():
        pxe_config.refuse_unsigned_ipxe(plan.scenario, plan.site, path.read_bytes())
    try:
        if twins:
            check_firmware(plan)
        with state.locked(plan.lab_dir, plan.name):
            if twins:
                state.update(plan.lab_dir, scenario=str(plan.scenario), status="pxe-twins")
            build_nfs_root(plan, dirs, say)
            k, img = build_boot_files(plan, dirs, say)
            changes = tftp.Changes()
            if write:
                changes = write_tftp_tree(plan.scenario, tftp_dir, plan.site, k, img,
                                          dirs.cache, say)
                say(f"TFTP tree {tftp_dir}: {len(changes.written)} written, "
                    f"{len(changes.removed)} removed, {changes.unchanged} unchanged "
                    f"({len(plan.site.machines)} machines)")
            if not twins:
                return changes, None
            netns = start_lab_host(plan, dirs, say)
            with connected(plan) as conns:
                if plan.stand_in:
                    say(f"twins: their files name your NFS server {plan.stand_in} ([pxe] "
                        f"nfs_server); in the lab, vlab's own server answers at "
                        f"{plan.stand_in} with the same tree at the same path "
                        f"{plan.export_path}, so the twins prove the files, loaders, kernel, "
                        "initrd and the mount they name, not your server's exports "
                        "(vlab-site/exports is that line)")
                started, verdicts = boot(plan, dirs, k, netns, conns, say, tftp_dir)
                save_results(plan, started, verdicts)
                rep = status(plan)  # as `vlab status` sees the twins' lab, while it runs
    except BaseException:
        if twins:  # the twins' claim, boot files and whatever of the lab started
            with contextlib.suppress(Exception):
                down(plan, dirs, lambda _text: None)
        raise
    down(plan, dirs, say)
    return changes, rep


def refuse_twins(scenario: Scenario, dirs: Dirs, tftp_dir: Path) -> None:
    """Before anything is made for twins: the lab is not up (its twins would take its
    place and their teardown its network and NFS server), and the twins' DHCP and TFTP
    server (dnsmasq, an unprivileged user) can reach the tree."""
    lab_dir = dirs.state / "labs" / scenario.lab.name
    status = state.load(lab_dir).get("status")
    if (lab_dir / state.STATE).exists() and status != "pxe-twins":
        raise UsageError(f"lab {scenario.lab.name} is {status or 'recorded'} (vlab up); "
                         "vlab pxe --twins boots its twins as that lab and would take its "
                         f"place; fix: vlab down {scenario.path} first, or boot the twins from a "
                         "copy of the scenario with another [lab] name")
    folder = tftp_dir.absolute()
    for d in [folder, *folder.parents]:
        if d.exists() and not d.stat().st_mode & 0o001:
            raise UsageError(f"--tftp-dir {tftp_dir}: {d} is mode {d.stat().st_mode & 0o7777:o}"
                             ", so the twins' TFTP server (dnsmasq, running unprivileged) "
                             f"cannot reach the tree; fix: chmod o+x {d}, or give a --tftp-dir "
                             "in folders others may traverse")
