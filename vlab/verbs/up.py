"""`vlab up`: the seed page's steps in order. Build the NFS root, the kernel and initrd, start
the lab host, export the root, define the network, boot the terminals, watch their consoles."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vlab import procs, progress, run, state
from vlab.artifacts import pxe_config, templates
from vlab.artifacts.catalog import lab_digests
from vlab.build import builders, efi, httpboot, initrd, kernel, mounts, nfsroot
from vlab.errors import HostError, MissingTool, UsageError, VirtError
from vlab.nodes import labhost, reach, virt
from vlab.plan.lab import Dirs, LabPlan, NodePlan, TerminalPlan
from vlab.plan.site import INITRD, KERNEL, Site
from vlab.progress import Say
from vlab.report.status import report
from vlab.scenario.model import (
    LOCAL,
    Arch,
    FaultAfter,
    Firmware,
    Hypervisor,
    InitrdBuilder,
    KernelSource,
    Netboot,
    RootSource,
    Scenario,
)
from vlab.serve import exportfs, firewall, nfsserver, tftp, web
from vlab.verbs.faults import DuringBoot, run_faults
from vlab.verbs.probes import HOST_KEY_WAIT, SSH_ROOTS, run_probes
from vlab.watch import sshkeys
from vlab.watch.consoles import watch_consoles
from vlab.watch.judge import OK, Verdict


def up(scenario: Scenario, plan: LabPlan, dirs: Dirs, say: Say) -> dict[str, Any]:
    """Build what is missing, export the root, boot every terminal, return the report."""
    check_firmware(plan)
    with state.locked(plan.lab_dir, plan.name):
        state.update(plan.lab_dir, scenario=str(plan.scenario), status="starting")
        build_nfs_root(plan, dirs, say)
        k, img = build_boot_files(plan, dirs, say)
        netns = start_lab_host(plan, dirs, say)
        with connected(plan) as conns:
            if all(virt.domain_state(conns[t.node], t.domain) == "running"
                   for t in plan.terminals):
                return already_up(plan, dirs, netns, conns, say)
            tftp_dir = write_lab_tftp_tree(plan, dirs, k, img, say)

            def restart() -> None:
                restart_nfs_server(plan, dirs, netns, say)

            during = DuringBoot(scenario, plan, conns, restart, say)
            started, verdicts = boot(plan, dirs, k, netns, conns, say, tftp_dir,
                                     during.start if during.faults else None)
            faults = during.outcomes(started, verdicts)
            probes = run_probes(scenario, plan, verdicts, say)
            await_relayed_host_keys(plan, verdicts, say)
            state.update(plan.lab_dir, status="up", artifacts=lab_digests(plan))
            save_results(plan, started, verdicts, probes, faults)
            if any(f.after is FaultAfter.OK for f in scenario.faults):
                after = run_faults(scenario, plan, conns, verdicts, restart, say)
                faults = {t: faults.get(t, []) + after.get(t, []) for t in {*faults, *after}}
                again = run_probes(scenario, plan, verdicts, say)
                save_results(plan, started, verdicts, probes, faults, again)
            return report(plan, conns)


@contextmanager
def connected(plan: LabPlan) -> Iterator[dict[str, virt.Conn]]:
    """A libvirt connection to each node that runs a terminal, closed after (a qemu+ssh://
    one keeps an ssh process of its own until then)."""
    conns = {h.name: reach.connect(h) for h in plan.busy_nodes}
    try:
        yield conns
    finally:
        for conn in conns.values():
            virt.close(conn)


ARM64_QEMU = "qemu-system-aarch64"


def check_firmware(plan: LabPlan) -> None:
    """OVMF (AAVMF) is installed for the UEFI terminals, and QEMU for arm64 ones, before
    anything starts."""
    if plan.arch is Arch.ARM64 and run.which(ARM64_QEMU) is None:
        raise MissingTool(f"{ARM64_QEMU} (arm64 terminals)", "qemu-system-arm")
    for t in plan.terminals:
        if t.firmware is not Firmware.BIOS:
            efi.firmware(t.firmware.value, plan.arch)


def boot(plan: LabPlan, dirs: Dirs, k: kernel.Kernel, netns: str | None,
         conns: dict[str, virt.Conn], say: Say, tftp_dir: Path | None,
         on_mounted: Callable[[], None] | None = None
         ) -> tuple[dict[TerminalPlan, float], dict[TerminalPlan, Verdict]]:
    """The seed page's boot, for a lab's terminals and for PXE twins alike: guard, export,
    define the network (serving `tftp_dir` by PXE), ship, boot, watch; when each terminal
    started, and its verdict."""
    guard_lab(plan, netns, ipv6=tftp_dir is not None or plan.ipv6)  # before anything answers
    export_nfs_root(plan, dirs, netns, say)  # starts while the network is defined
    define_network(plan, conns[LOCAL], say, tftp_dir)
    join_lab_network(plan, netns)
    if tftp_dir is not None and web.needed(plan):
        server = web.start(plan, netns, tftp_dir)
        say(f"web server: lighttpd (pid {server}) serves {tftp_dir} at {plan.http_url}, on "
            "the lab network only")
    ship_boot_files(plan, k, say)
    create_terminals(plan, conns)
    wait_for_nfs_server(plan, say)
    started = boot_terminals(plan, conns, say)
    return started, watch_consoles(plan, conns, started, say, tftp_dir, on_mounted)


def guard_lab(plan: LabPlan, netns: str | None, ipv6: bool) -> bool:
    """The lab's firewall rule (firewall.py; vlab down removes it whatever happened); True
    if it was missing. A lab with other hypervisor hosts has none: their terminals reach its
    NFS server at the bridge's address from outside it."""
    if plan.nfs_netns is None:
        return False
    return firewall.guard(plan, netns, ipv6)


def already_up(plan: LabPlan, dirs: Dirs, netns: str | None, conns: dict[str, virt.Conn],
               say: Say) -> dict[str, Any]:
    """Every terminal runs. If the scenario now renders other artifacts than the running lab
    was made from, say which (vlab changes nothing under running guests); if the lab's NFS
    server is gone, start it again; else nothing changes."""
    state.update(plan.lab_dir, status="up")  # as it was: this up changes nothing of it
    made = state.load(plan.lab_dir).get("artifacts")
    if isinstance(made, dict):
        now = lab_digests(plan)
        changed = sorted(n for n in {*made, *now} if made.get(n) != now.get(n))
        if changed:
            raise UsageError(f"lab {plan.name} is up, made from another version of "
                             f"{plan.scenario}: {', '.join(changed[:8])}"
                             + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
                             + f" would change; fix: vlab down {plan.scenario}, then vlab up "
                             "again (vlab does not change a lab under running terminals)")
    if guard_lab(plan, netns, ipv6=plan.tftp_dir.is_dir() or plan.ipv6):
        say(f"lab {plan.name} is up, but its firewall rule was gone: put back")
    if virt.dhcp_server(plan.network) is None:
        say(f"lab {plan.name} is up, but its network's DHCP server (dnsmasq) is gone: "
            "libvirt starts it again, with the pinned hosts and their leases")
        virt.restart_dhcp_server(conns[LOCAL], plan.network)
    if (server := nfsserver.pid(plan)) is not None and procs.frozen(server):
        say(f"lab {plan.name} is up, but its NFS server was left frozen (an interrupted "
            "nfs-pause fault): letting it go on")
        procs.thaw(server)
    if nfsserver.pid(plan) is None:
        say(f"lab {plan.name} is up, but its NFS server is gone: starting it again")
        restart_nfs_server(plan, dirs, netns, say)
        return report(plan, conns)
    say(f"lab {plan.name} is already up: nothing changed")
    return report(plan, conns)


def build_nfs_root(plan: LabPlan, dirs: Dirs, say: Say) -> None:
    source = plan.root_source
    if source is RootSource.BUSYBOX:
        say(f"NFS root: busybox terminal at {plan.export_path}")
        nfsroot.build_busybox(plan.export_path, plan.arch, dirs.cache)
    elif source is RootSource.DEBIAN:
        nfsroot.build_debian(plan.export_path, plan.debian_suite, plan.debian_packages, say)
        say(f"NFS root: Debian {plan.debian_suite} at {plan.export_path}")
    elif source is RootSource.IMAGE:
        assert plan.root_image is not None
        state.update(plan.lab_dir, image=str(plan.root_image), image_mount=str(plan.export_path))
        raw = nfsroot.mount_image(plan.root_image, plan.export_path, plan.root_partition,
                                  plan.boot_partition, dirs.cache, say)
        state.update(plan.lab_dir, image_file=str(raw),
                     image_loop=mounts.source_of(plan.export_path))
        say(f"NFS root: image {plan.root_image}, attached and mounted read-only at "
            f"{plan.export_path}" + (f" (as {raw})" if raw != plan.root_image else ""))
    else:
        say(f"NFS root: directory {plan.export_path}, as it is")


def build_boot_files(plan: LabPlan, dirs: Dirs, say: Say) -> tuple[kernel.Kernel, Path]:
    if plan.kernel_source is KernelSource.ROOT:
        k = kernel.from_root(plan.export_path, plan.kernel_version, dirs.cache, plan.scenario)
        say(f"kernel: {k.release}, the root's own")
    else:
        say(f"kernel: {plan.kernel_package} ({plan.arch}) from Debian (cached after the "
            "first fetch)")
        k = kernel.fetch(plan.kernel_package, dirs.cache, plan.arch)
    nfsserver.refuse_broken_reads(plan, k.release)
    if plan.builder is InitrdBuilder.VLAB:
        say(f"initrd: vlab's busybox initrd for {k.release} with "
            f"{', '.join(initrd.initrd_modules(plan))}")
        img = initrd.build(k, plan, dirs.cache)
    else:
        img = builders.output(plan, plan.export_path, k, dirs.cache)
        say(f"initrd: {plan.builder.value} of the root, in vlab's sandbox, for {k.release}: "
            + (f"cached ({img.name}: the root's tree is as it was)" if img.exists() else
               f"building {img.name} (a root, kernel or configuration not seen before)"))
        # Its build mounts live in the sandbox's own mount namespace: they go with it,
        # whatever ends the build, so there is nothing of it to record for vlab down.
        img = builders.build(plan, plan.export_path, k, img)
    boot = plan.kernel_path.parent
    boot.mkdir(parents=True, exist_ok=True)
    for d in (dirs.state, dirs.state / "labs", plan.lab_dir, boot):
        d.chmod(0o755)  # QEMU (libvirt-qemu) must reach the kernel and initrd
    files = [(k.boot_image, plan.kernel_path), (img, plan.initrd_path)]
    if any(t.firmware is not Firmware.BIOS and t.boot == "kernel" for t in plan.terminals):
        files.append((k.vmlinuz, plan.node(LOCAL).efi_kernel_path))
    for src, dst in files:
        tmp = dst.with_name(dst.name + ".new")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    return k, img


def start_lab_host(plan: LabPlan, dirs: Dirs, say: Say) -> str | None:
    with state.all_labs_locked(dirs.state):  # two labs coming up start one host
        before = labhost.status(plan.netns)
        if before.mode == "down":
            say(f"lab host: starting an isolated libvirtd in network namespace {plan.netns}")
            state.save(dirs.state, {"on_demand": True}, state.HOST_FILE)
        host = labhost.ensure(plan.lab_host, plan.netns, dirs.state / "host")
    say(host.describe())
    state.update(plan.lab_dir, host=host.mode, netns=host.netns, uri=plan.uri)
    return host.netns


def write_lab_tftp_tree(plan: LabPlan, dirs: Dirs, k: kernel.Kernel, img: Path,
                        say: Say) -> Path | None:
    """Terminals with boot = "pxe" boot through a TFTP tree of the lab's own."""
    if plan.tftp_tree is None:
        return None
    write_tftp_tree(plan.scenario, plan.tftp_dir, plan.tftp_tree, k, img, dirs.cache)
    say(f"PXE: TFTP tree {plan.tftp_dir} for "
        f"{', '.join(m.name for m in plan.tftp_tree.machines)}")
    return plan.tftp_dir


def write_tftp_tree(scenario: Path, tftp_dir: Path, site: Site, k: kernel.Kernel,
                    img: Path, cache_dir: Path, say: Say | None = None) -> tftp.Changes:
    pxe_config.refuse_unsigned_kernel(scenario, site, k.vmlinuz.read_bytes(), k.release)
    ipxe = tftp.ipxe_loaders({m.firmware for m in site.by(Netboot.IPXE)})
    loaders = efi.loaders(site.arch, cache_dir) if site.uefi else None
    if loaders is not None and loaders.grub_dir != site.grub_dir:
        raise HostError(f"{loaders.files[efi.GRUBS[site.arch]]} reads its grub.cfg from "
                        f"/{loaders.grub_dir}, not /{site.grub_dir} as Debian's signed network "
                        "GRUB does and vlab writes; fix: install Debian's "
                        "grub-efi-amd64-signed")
    # pxelinux and GRUB load a bzImage (Debian's, signed: shim's GRUB checks it under Secure
    # Boot): the PVH ELF is for direct kernel boot only. An arm64 tree has no pxelinux.
    bios = tftp.bootloaders() if site.arch is Arch.AMD64 else {}
    copies = {**bios, **(loaders.files if loaders else {}), **ipxe,
              KERNEL: k.vmlinuz, INITRD: img}
    http = site.by(Netboot.HTTP)
    if http and say is not None:
        say(f"HTTP boot: a RAM disk image for each of {', '.join(m.name for m in http)}")
    for m in http:
        copies[m.http_image] = httpboot.image(cache_dir, pxe_config.grub_config(m), k.vmlinuz,
                                              img)
    return tftp.write_tree(tftp_dir, pxe_config.shared_files(site, str(tftp_dir.absolute())),
                           copies, pxe_config.machine_groups(site))


def define_network(plan: LabPlan, conn: virt.Conn, say: Say,
                   tftp_dir: Path | None = None) -> None:
    say(f"network {plan.network}: bridge {plan.bridge}, {plan.subnet}, "
        f"{len([t for t in plan.terminals if t.ip])} pinned DHCP hosts"
        + (f", PXE from {tftp_dir}" if tftp_dir else ""))
    state.update(plan.lab_dir, network=plan.network)
    plan.dnsmasq_log.parent.mkdir(parents=True, exist_ok=True)
    plan.dnsmasq_log.unlink(missing_ok=True)  # this boot's, not the last one's
    virt.start_network(conn, plan.network, templates.network_xml(plan, tftp_dir))


def export_nfs_root(plan: LabPlan, dirs: Dirs, netns: str | None, say: Say) -> None:
    """Start the lab's NFS server: in a namespace of its own (made first, recorded before),
    or in the lab host's, serving the export from a filesystem of its own (exportfs.py).
    join_lab_network() puts it on the lab network once that is up."""
    image = exportfs.image(plan, dirs.cache, say) if exportfs.needs_image(plan) else None
    state.update(plan.lab_dir, nfs_server=str(plan.nfs_server_dir), nfs_netns=plan.nfs_netns)
    plan.nfs_server_dir.mkdir(parents=True, exist_ok=True)
    (plan.lab_dir / "exports").write_text(templates.exports_line(plan))
    if plan.nfs_netns is not None:
        nfsserver.make_namespace(plan, netns)
    nfsserver.start(plan, netns, dirs.state, image)


def restart_nfs_server(plan: LabPlan, dirs: Dirs, netns: str | None, say: Say) -> None:
    """The lab's NFS server again, under running terminals, at its address and MAC."""
    export_nfs_root(plan, dirs, netns, say)
    join_lab_network(plan, netns)
    wait_for_nfs_server(plan, say)


def join_lab_network(plan: LabPlan, netns: str | None) -> None:
    if plan.nfs_netns is not None:
        nfsserver.join_bridge(plan, netns)


def ship_boot_files(plan: LabPlan, k: kernel.Kernel, say: Say) -> None:
    """The kernel and initrd to every other node that runs a terminal (direct kernel boot
    reads them there); what is already there with the right checksum stays."""
    for h in plan.busy_nodes:
        if not h.remote:
            continue
        state.update(plan.lab_dir, shipped=sorted({*state.load(plan.lab_dir).get(
            "shipped", []), h.name}))
        t0 = time.monotonic()
        with reach.session(h) as session:
            done = session.ship(boot_files_for(plan, k, h))
        say(f"host {h.name}: " + (f"shipped {len(done.moved)} file(s), "
            f"{done.bytes / 2**20:.1f} MiB, to {h.files_dir} in {time.monotonic() - t0:.1f} s"
            if done.moved else f"kernel and initrd already in {h.files_dir}")
            + (f" ({len(done.kept)} kept)" if done.moved and done.kept else ""))


def boot_files_for(plan: LabPlan, k: kernel.Kernel, h: NodePlan) -> dict[Path, str]:
    """What goes to another node: local file -> its path there. A KVM node gets the
    compressed kernel (~8 MiB, decompressed in a blink); a TCG one the uncompressed ELF vlab
    boots here too (~60 MiB: ~0.5 s more to ship on a LAN, ~2.3 s less to boot)."""
    kernel_file = k.boot_image if plan.hypervisor is Hypervisor.QEMU else k.vmlinuz
    return {kernel_file: str(h.kernel_path), plan.initrd_path: str(h.initrd_path)}


def wait_for_nfs_server(plan: LabPlan, say: Say) -> None:
    """The guests boot only once the NFS server listens: they never wait for it."""
    pid = nfsserver.wait_ready(plan)
    clients = [*map(str, plan.nfs_clients), *([plan.ipv6_subnet] if plan.ipv6 else [])]
    where = f"{plan.nfs_address}:{plan.nfs_port}" + (
        f" and [{plan.nfs_address6}]:{plan.nfs_port}" if plan.ipv6 else "")
    say(f"export: nfs-ganesha (pid {pid}) serves {plan.export_path} read-only to "
        f"{', '.join(clients)} on {where}"
        + (f" (network namespace {plan.nfs_netns}, on the lab network only)"
           if plan.nfs_netns else ""))


def create_terminals(plan: LabPlan, conns: dict[str, virt.Conn]) -> None:
    """Every terminal's domain, created paused: QEMU starts while the NFS server does, and
    a console libvirt relays (another host's, or Xen's, which libxl does not log to a
    file) is open before the guest runs."""
    xml = {t: templates.domain_xml(plan, t) for t in plan.terminals}

    def create(t: TerminalPlan) -> None:
        t.console_log.parent.mkdir(parents=True, exist_ok=True)
        t.console_log.unlink(missing_ok=True)
        if t.nvram is not None:  # libvirt copies OVMF's variable store here: a fresh one
            t.nvram.parent.mkdir(parents=True, exist_ok=True)
            t.nvram.unlink(missing_ok=True)
        if not plan.relayed(t):
            virt.destroy_domain(conns[t.node], t.domain)
            virt.start_domain(conns[t.node], xml[t], paused=True)
            return
        # A relayed terminal is made on the connection its console relay then keeps.
        node = plan.node(t.node)
        own = reach.connect(node)
        try:
            virt.destroy_domain(own, t.domain)
            virt.start_domain(own, xml[t], paused=True)
        except VirtError:
            virt.close(own)
            raise
        virt.relay_console(own, lambda: reach.connect(node), t.domain, t.console_log)

    def create_on(node: str) -> None:
        # Another host's domains one after another: a Xen host's libvirtd answers nothing,
        # not even keepalive, while libxl builds a domain (20-25 s each on the nested test host
        # under TCG; three at once were taken for a dead host), and libvirt's client over ssh lost
        # track of calls made at once on one connection (GLib-CRITICAL lines, then a hang).
        for t in plan.terminals:
            if t.node == node:
                create(t)

    here = [t for t in plan.terminals if not plan.relayed(t)]
    there = list(dict.fromkeys(t.node for t in plan.terminals if plan.relayed(t)))
    with ThreadPoolExecutor(max_workers=min(virt.CALLS_AT_ONCE, len(here) + len(there))) as pool:
        done = [pool.submit(create, t) for t in here] + [pool.submit(create_on, n) for n in there]
        for future in done:
            future.result()  # re-raise the first failure here


def boot_terminals(plan: LabPlan, conns: dict[str, virt.Conn],
                   say: Say) -> dict[TerminalPlan, float]:
    """Run the domains create_terminals() made (once the NFS server listens: the guests
    never wait for it); when each started."""
    started: dict[TerminalPlan, float] = {}
    for t in plan.terminals:
        started[t] = time.monotonic()
        virt.resume_domain(conns[t.node], t.domain)
        say(f"boot {t.name}: {t.domain} on {t.node}, MAC {t.mac}"
            + (f", IP {t.ip}" if t.ip else "") + (f", IPv6 {t.ip6} (SLAAC)" if t.ip6 else "")
            + ("" if t.ip or t.ip6 else ", IP from its network's DHCP"))
    return started


def await_relayed_host_keys(plan: LabPlan, verdicts: dict[TerminalPlan, Verdict],
                            say: Say) -> None:
    """A relayed console is copied only while vlab runs, and a terminal prints its SSH host
    key after its ready line: wait for each key line before vlab up ends, so that vlab ssh
    finds it in the copy."""
    if not plan.ssh_key or plan.root_source not in SSH_ROOTS:
        return
    waiting = [t for t, v in verdicts.items() if v.name == OK and plan.relayed(t)
               and sshkeys.host_key_from_console(t.console_log) is None]
    if waiting:
        say(f"waiting for the SSH host key of {', '.join(t.name for t in waiting)} on "
            "the relayed console")
    deadline = time.monotonic() + HOST_KEY_WAIT
    for t in waiting:
        sshkeys.await_host_key(t.console_log, max(0.0, deadline - time.monotonic()))


def save_results(plan: LabPlan, started: dict[TerminalPlan, float],
                 verdicts: dict[TerminalPlan, Verdict],
                 probes: dict[str, list[dict[str, Any]]] | None = None,
                 faults: dict[str, list[dict[str, Any]]] | None = None,
                 probes_after: dict[str, list[dict[str, Any]]] | None = None) -> None:
    # booted_at: seconds into the vlab command when the domain started (seconds count from it).
    state.save(plan.lab_dir, {t.name: {**asdict(v), "booted_at": round(started[t] - progress.T0, 2),
                                       "probes": (probes or {}).get(t.name, []),
                                       "faults": (faults or {}).get(t.name, []),
                                       "probes_after": (probes_after or {}).get(t.name, [])}
                              for t, v in verdicts.items()}, state.RESULTS)
