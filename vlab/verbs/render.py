"""`vlab render`: every text file vlab would write for a lab, without starting anything."""

from __future__ import annotations

import shlex
from pathlib import Path

from vlab.artifacts.catalog import all_artifacts
from vlab.build import builders
from vlab.plan.lab import LabPlan
from vlab.scenario.model import InitrdBuilder, RootSource
from vlab.verbs.claim import validated


def artifacts(plan: LabPlan) -> dict[str, str]:
    """Every text file vlab would write for this lab, the builder's config dir included."""
    files = all_artifacts(plan)
    validated(files, None)  # `vlab render` remembers nothing
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


def render_to(plan: LabPlan, out: Path) -> list[Path]:
    written = []
    for name, text in artifacts(plan).items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
