"""Initrds built by the root's own builder, in a sandbox (vlab.sandbox: the page's
chroot and build mounts, made a boundary): initramfs-tools' mkinitramfs or dracut. Their
configuration goes in through the builder's /tmp, a scratch folder (the root is read-only
to it), and each gets small vlab hooks: one says at once when no NIC appears, one prints the proof
of the NFS root."""

from __future__ import annotations

import sys
from pathlib import Path

from vlab import run
from vlab.artifacts import templates
from vlab.build import cache, mounts
from vlab.build.initrd import modules_for
from vlab.build.kernel import Kernel
from vlab.errors import MissingTool
from vlab.plan.lab import LabPlan
from vlab.scenario.model import InitrdBuilder

OUTPUT = "vlab-initrd.img"
CONFDIR = "/tmp/vlab-{builder}"  # inside the root, on the build tmpfs


def config_files(plan: LabPlan) -> dict[str, tuple[str, int]]:
    """The builder's temporary config directory: relative path -> (text, mode)."""
    modules = modules_for(plan)

    def t(name: str) -> str:
        return templates.template(f"builders/{name}", modules=modules)

    if plan.builder is InitrdBuilder.INITRAMFS_TOOLS:
        return {
            "initramfs.conf": (t("initramfs-tools.conf.j2"), 0o644),
            "modules": (t("initramfs-tools-modules.j2"), 0o644),
            "conf.d/.keep": ("", 0o644),
            "hooks/.keep": ("", 0o644),
            "scripts/nfs-top/vlab": (t("initramfs-tools-top.sh.j2"), 0o755),
            "scripts/nfs-bottom/vlab": (t("initramfs-tools-bottom.sh.j2"), 0o755),
        }
    return {
        "dracut.conf": (t("dracut.conf.j2"), 0o644),
        "conf.d/.keep": ("", 0o644),
        "99-vlab.sh": (t("dracut-hook.sh.j2"), 0o755),
        "99-vlab-nic.sh": (t("dracut-settled.sh.j2"), 0o755),
        "99-vlab-root.sh": (t("dracut-finished.sh.j2"), 0o755),
    }


def command(plan: LabPlan, release: str, confdir: str) -> list[str]:
    """The builder's command line, as run inside the root (paths are the chroot's)."""
    out = f"/tmp/{OUTPUT}"
    if plan.builder is InitrdBuilder.INITRAMFS_TOOLS:
        return ["mkinitramfs", "-d", confdir, "-o", out, release]
    return ["dracut", "--force", "--no-hostonly", "--conf", f"{confdir}/dracut.conf",
            "--confdir", f"{confdir}/conf.d", "--tmpdir", "/tmp",
            "--include", f"{confdir}/99-vlab.sh", "/lib/dracut/hooks/pre-pivot/99-vlab.sh",
            "--include", f"{confdir}/99-vlab-nic.sh",
            "/lib/dracut/hooks/initqueue/settled/99-vlab-nic.sh",
            "--include", f"{confdir}/99-vlab-root.sh",
            "/lib/dracut/hooks/initqueue/finished/99-vlab-root.sh",
            "--kver", release, out]


# Where a builder finds what goes into an initrd: programs, libraries, its own scripts and
# configuration, the kernel's modules.
TREES = ("etc", "usr", "lib", "lib64", "bin", "sbin")
PROGRAM = {InitrdBuilder.INITRAMFS_TOOLS: ("usr/sbin/mkinitramfs", "initramfs-tools"),
           InitrdBuilder.DRACUT: ("usr/bin/dracut", "dracut dracut-network")}


def output(plan: LabPlan, root: Path, kernel: Kernel, cache_dir: Path) -> Path:
    """Where the initrd of this root, kernel and configuration is cached (it may not be
    built yet). What the builder reads is the root's own tree: any file there that changed
    (another image at the same mount point, a package upgraded in a dir root) is another
    initrd."""
    confdir = CONFDIR.format(builder=plan.builder.value)
    inputs = cache.key(plan.builder.value, kernel.key, cache.tree_key(root, TREES),
                       repr(sorted(config_files(plan).items())),
                       *command(plan, kernel.release, confdir))
    return cache_dir / "initrds" / f"{plan.builder.value}-{inputs}.img"


def build(plan: LabPlan, root: Path, kernel: Kernel, final: Path) -> Path:
    """The initrd at `final` (output()), built there unless it is already."""
    if final.exists():
        return final
    files = config_files(plan)
    confdir = CONFDIR.format(builder=plan.builder.value)
    argv = command(plan, kernel.release, confdir)
    program, package = PROGRAM[plan.builder]
    if mounts.inside(root, program) is None:
        raise MissingTool(f"{plan.builder.value} in the root {root} (/{program})",
                          f"{package} (inside the root)")
    with cache.publish(final) as tmp, cache.scratch(final.parent) as scratch:
        # The sandbox copies the scratch folder into the builder's /tmp (its config) and,
        # after it, the initrd out of it into the scratch folder (a regular file, written by
        # the sandbox itself); the root itself is read-only to it (vlab.sandbox).
        host_confdir = scratch / confdir.removeprefix("/tmp/")
        for rel, (text, mode) in files.items():
            path = host_confdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(mode)
        run.run([sys.executable, "-m", "vlab.build.sandbox", str(root), str(scratch),
                 "--keep", OUTPUT, "--", *argv],
                timeout=1200,
                hint=f"the {plan.builder.value} run inside {root} failed; see its output above")
        (scratch / OUTPUT).replace(tmp)  # the same folder: a rename, not a second copy
        tmp.chmod(0o644)  # QEMU runs as libvirt-qemu
    return final
