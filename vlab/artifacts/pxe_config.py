"""PXE: every file of a TFTP tree and the DHCP/NFS snippets, rendered from a site's plan
(site.py; pure: tftp.py writes them)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

from vlab.artifacts import templates
from vlab.build import efi
from vlab.errors import ScenarioError
from vlab.plan.site import INITRD, KERNEL, MachinePlan, Site
from vlab.scenario.model import Arch, Firmware, Netboot
from vlab.serve.tftp import IPXE

BOOTLOADER = "pxelinux.0"
# The boot file DHCP hands each firmware (it tells by the client's architecture, option 93,
# efi.CLIENT_ARCH): a UEFI host gets Debian's signed shim, Secure Boot or not; shim loads the
# signed network GRUB, which reads its prefix's grub.cfg (site.GRUB_DIR); a BIOS one pxelinux.


def refuse_unsigned_kernel(scenario: Path, site: Site, image: bytes, release: str) -> None:
    """A Secure Boot machine gets a kernel shim can check: one without any signature would
    stop at GRUB's "bad shim signature" on every such host (lint, before any write)."""
    _refuse_unsigned(scenario, [m for m in site.machines if m.firmware is Firmware.UEFI_SECURE],
                     "firmware", image, f"the kernel ({release})", "shim starts no unsigned kernel",
                     'use a signed one ([kernel] source = "debian": Debian\'s is), sign this '
                     "one with a key the hosts trust (sbsign, and enroll it with mokutil), or "
                     'set firmware = "uefi"')


def refuse_unsigned_ipxe(scenario: Path, site: Site, loader: bytes) -> None:
    """A Secure Boot host is not handed an unsigned iPXE: its firmware refuses to start it
    ("Access Denied"), on every such host (lint, before any write). Debian's is unsigned."""
    _refuse_unsigned(scenario, [m for m in site.by(Netboot.IPXE)
                                if m.firmware is Firmware.UEFI_SECURE],
                     "netboot", loader, f"iPXE ({IPXE[Firmware.UEFI_SECURE][1]})",
                     "their firmware starts no unsigned loader",
                     'set netboot = "http" (UEFI HTTP boot of Debian\'s signed shim, GRUB and '
                     'kernel) or "tftp", or firmware = "uefi" if Secure Boot is off')


def _refuse_unsigned(scenario: Path, secure: list[MachinePlan], key: str, image: bytes,
                     what: str, refusal: str, fix: str) -> None:
    if not secure or efi.signed(image):
        return
    names = [m.name for m in secure]
    raise ScenarioError(scenario, f"{secure[0].key}.{key}",
                        f"Secure Boot for {', '.join(names[:5])}"
                        f"{' and more' if len(names) > 5 else ''}, but {what} carries no "
                        f"signature, and {refusal}", fix)


MACHINE_TEMPLATES = ("pxe/pxelinux.cfg.j2", "pxe/grub.cfg.j2", "pxe/ipxe.j2")


def grub_config(m: MachinePlan) -> str:
    """A host's GRUB configuration: in the tree's GRUB folder, and in its HTTP boot image."""
    return templates.template("pxe/grub.cfg.j2", h=m, kernel=KERNEL, initrd=INITRD)


def machine_files(m: MachinePlan, grub_dir: str, arch: Arch = Arch.AMD64) -> dict[str, str]:
    """The files of one machine, by path relative to the TFTP root (an arm64 machine boots
    by UEFI through GRUB only: no pxelinux or iPXE file)."""
    # GRUB's own name for a host's network config, in the folder it reads.
    out = {f"{grub_dir}/grub.cfg-{m.pxelinux_name}": grub_config(m)}
    if arch is Arch.ARM64:
        return out
    cfg = templates.template("pxe/pxelinux.cfg.j2", append=m.append, kernel=KERNEL, label=m.name)
    out[f"pxelinux.cfg/{m.pxelinux_name}"] = cfg
    if m.hexip_name:
        out[f"pxelinux.cfg/{m.hexip_name}"] = cfg
    out[m.ipxe_script] = templates.template("pxe/ipxe.j2", h=m, kernel=KERNEL, initrd=INITRD)
    return out


def machine_groups(site: Site) -> dict[str, tuple[str, Callable[[], dict[str, str]]]]:
    """Per machine: a key of everything its files depend on, and how to render them. A
    machine whose key is unchanged is not rendered again (10,000 of them, one changed: 4 files)."""
    texts = hashlib.sha256("".join(map(templates.static, MACHINE_TEMPLATES)).encode()).hexdigest()
    return {m.name: (hashlib.sha256(repr((texts, site.grub_dir, site.arch, m)).encode())
                     .hexdigest()[:20], partial(machine_files, m, site.grub_dir, site.arch))
            for m in site.machines}


# Where `vlab render` shows the tree (vlab pxe writes it in its --tftp-dir)
SHOWN_TREE = "/srv/tftp"


def shared_files(site: Site, tree: str = SHOWN_TREE) -> dict[str, str]:
    """The files every machine shares: the default config and the site snippets (the web
    server's serves the tree from its folder, `tree`, when a host fetches over HTTP)."""
    snippet = {"site": site, "bootloader": BOOTLOADER, "shim": efi.SHIMS[site.arch],
               "grub": efi.GRUBS[site.arch], "arch_codes": efi.CLIENT_ARCH[site.arch],
               "efi_tag": efi.EFI_TAG[site.arch], "ipxe": {f: IPXE[f][0] for f in Firmware},
               "Netboot": Netboot}
    files = {
        f"{site.grub_dir}/grub.cfg": templates.template(
            "pxe/grub-default.cfg.j2", cmdline=site.default_cmdline, kernel=KERNEL,
            initrd=INITRD),
        "vlab-site/exports": templates.template(
            "nfs/exports-site.j2", path=site.export_path, subnet=site.subnet,
            root_squash=site.root_squash),
        "vlab-site/dhcpd.conf": templates.template("pxe/dhcpd.conf.j2", **snippet),
        "vlab-site/dnsmasq.conf": templates.template("pxe/dnsmasq.conf.j2", **snippet),
    }
    if site.tftp6:
        files["vlab-site/dhcpd6.conf"] = templates.template("pxe/dhcpd6.conf.j2", **snippet)
    if site.arch is Arch.AMD64:
        files["pxelinux.cfg/default"] = templates.template(
            "pxe/pxelinux.cfg.j2", append=site.default_append, kernel=KERNEL, label="default")
    if site.by(Netboot.HTTP) or site.by(Netboot.IPXE):
        files[WEB_SNIPPET] = templates.template("pxe/lighttpd-site.conf.j2", site=site,
                                                tree=tree.rstrip("/") + "/")
    return files


WEB_SNIPPET = "vlab-site/lighttpd.conf"


def tree_files(site: Site, tree: str = SHOWN_TREE) -> dict[str, str]:
    """Every text file of the tree, by path relative to its root (what `vlab render` shows)."""
    files = shared_files(site, tree)
    for m in site.machines:
        files.update(machine_files(m, site.grub_dir, site.arch))
    return files
