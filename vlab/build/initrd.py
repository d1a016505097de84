"""vlab's own initrd: static busybox, exactly the modules needed, and an /init that mounts
the root over NFS (see domains/initrd-init.sh.j2)."""

from __future__ import annotations

from pathlib import Path

from vlab.artifacts import templates
from vlab.build import busybox, cache
from vlab.build.cpio import Archive
from vlab.build.kernel import Kernel
from vlab.build.kmod import (
    MAX_MODULE,
    BadModulesDep,
    ModuleIndex,
    ModuleNotFound,
    plain_bytes,
    plain_path,
)
from vlab.errors import HostError, ScenarioError
from vlab.plan.lab import LabPlan
from vlab.scenario.model import NfsVersion, Writable

NIC_BUS = {"virtio_net": ("virtio_pci",), "e1000": ()}


def modules_for(plan: LabPlan) -> list[str]:
    """Module names the initrd loads: NIC drivers (with their bus), NFS, overlay if asked."""
    nics = [m for nic in plan.nic_drivers for m in (*NIC_BUS.get(nic.value, ()), nic.value)]
    nfs = "nfsv3" if plan.nfs_version is NfsVersion.V3 else "nfsv4"
    return [*nics, nfs, *(["overlay"] if plan.writable is Writable.OVERLAY else [])]


def initrd_modules(plan: LabPlan) -> list[str]:
    """What vlab's own initrd loads: the NIC drivers (with their bus), NFSv3 and NFSv4 both (a
    terminal whose root= or DHCP root path asks for the other version than the lab's still
    mounts; the lab's version first), overlay if asked."""
    nics = [m for nic in plan.nic_drivers for m in (*NIC_BUS.get(nic.value, ()), nic.value)]
    nfs = ["nfsv3", "nfsv4"] if plan.nfs_version is NfsVersion.V3 else ["nfsv4", "nfsv3"]
    return [*nics, *nfs, *(["overlay"] if plan.writable is Writable.OVERLAY else [])]


def load_order(kernel: Kernel, plan: LabPlan) -> list[str]:
    try:
        return ModuleIndex.load(kernel.modules).load_order(initrd_modules(plan))
    except ModuleNotFound as err:
        raise ScenarioError(plan.scenario, "initrd.nic_drivers", str(err),
                            "name drivers that this kernel ships as modules") from None
    except BadModulesDep as err:
        raise HostError(f"{kernel.modules}: {err}; fix: run depmod {kernel.release} in the "
                        "root (vlab copies only regular .ko files inside the module folder)"
                        ) from None


def module_bytes(kernel: Kernel, module: str) -> bytes:
    """A module's file, read only if it is a regular file inside the kernel's module folder
    (a root's modules.dep or a symlinked .ko must not copy a host file into the initrd)."""
    return cache.read_regular(Path(module), MAX_MODULE, "the module", follow=True,
                              within=kernel.modules)


def contents(kernel: Kernel, plan: LabPlan, bb: Path) -> Archive:
    """The initrd as an archive, in the order the kernel will unpack it (`bb`: the busybox
    of the terminals' architecture)."""
    order = load_order(kernel, plan)
    a = Archive()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp",
              "newroot", "etc", "etc/vlab", "lib", "lib/modules"):
        a.dir(d)
    # The kernel opens /dev/console for /init before anything can mount devtmpfs.
    a.chardev("dev/console", 5, 1)
    a.file("bin/busybox", bb.read_bytes(), 0o755)
    for applet in busybox.applets():
        if applet != "bin/busybox":
            a.symlink(applet, "/bin/busybox")
    a.file("init", templates.initrd_init().encode(), 0o755)
    a.file("etc/vlab/udhcpc.sh", templates.udhcpc_script().encode(), 0o755)
    a.file("etc/vlab/modules", "".join(f"{plain_path(m)}\n" for m in order).encode())
    made: set[Path] = set()
    for module in order:
        parent = Path("lib/modules", module).parent
        for folder in reversed([parent, *parent.parents]):
            if folder not in made and len(folder.parts) > 2:
                a.dir(str(folder))
                made.add(folder)
        try:
            data = plain_bytes(module, module_bytes(kernel, module))
        except BadModulesDep as err:
            raise HostError(f"{kernel.modules}: {err}; fix: reinstall the kernel's package "
                            "in the root") from None
        a.file(f"lib/modules/{plain_path(module)}", data)
    return a


def build(kernel: Kernel, plan: LabPlan, cache_dir: Path) -> Path:
    """The initrd for this kernel and NIC driver, built once and reused while inputs match."""
    # Keyed by its inputs, so a warm run neither reads the modules nor compresses anything.
    bb = busybox.binary(plan.arch, cache_dir)
    inputs = cache.key(
        kernel.key, *load_order(kernel, plan),
        cache.file_digest(bb), templates.initrd_init(), templates.udhcpc_script(),
    )
    final = cache_dir / "initrds" / f"{inputs}.img"
    if not final.exists():
        with cache.publish(final) as tmp:
            tmp.write_bytes(contents(kernel, plan, bb).gzipped())
            tmp.chmod(0o644)
    return final
