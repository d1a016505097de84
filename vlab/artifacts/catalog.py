"""Every text file vlab writes for a lab, by name: what `vlab render` shows, what `vlab up`
and `vlab pxe` write, and what a lab that is up was made from (its digests). Pure."""

from __future__ import annotations

from vlab.artifacts import pxe_config, templates
from vlab.build import cache
from vlab.plan.lab import LabPlan
from vlab.plan.site import Site

LAB_TFTP = "lab-tftp/"  # the lab's own PXE tree (its boot = "pxe" terminals)
SITE_TFTP = "tftp/"  # the tree `vlab pxe` writes for the scenario's [[machine]]s


def lab_artifacts(plan: LabPlan) -> dict[str, str]:
    """Every text file of the lab itself, its own PXE tree included, by relative name."""
    files = {
        "network.xml": templates.network_xml(plan),
        "ganesha.conf": templates.ganesha_conf(plan),
        "exports": templates.exports_line(plan),
        "initrd/init": templates.initrd_init(),
        "initrd/udhcpc.sh": templates.udhcpc_script(),
        "root/sbin/init": templates.root_init(),
        "root/etc/vlab/lease.sh": templates.lease_script(),
    }
    if "openssh-server" in plan.debian_packages and plan.root_source == "debian":
        files.update({f"root/{rel}": text
                      for rel, (text, _mode) in templates.debian_ssh_files().items()})
    for t in plan.terminals:
        files[f"domains/{t.name}.xml"] = templates.domain_xml(plan, t)
        files[f"cmdline/{t.name}"] = t.cmdline + "\n"
        if plan.domain_type == "xen":
            files[f"xl/{t.name}.cfg"] = templates.xl_cfg(plan, t)
    if plan.tftp_tree is not None:
        files.update(_tree(LAB_TFTP, plan.tftp_tree))
    return files


def all_artifacts(plan: LabPlan) -> dict[str, str]:
    """The lab's artifacts and the tree `vlab pxe` writes for its [[machine]]s."""
    files = lab_artifacts(plan)
    if plan.site is not None:
        files.update(_tree(SITE_TFTP, plan.site))
    return files


def _tree(prefix: str, site: Site) -> dict[str, str]:
    return {prefix + rel: text for rel, text in pxe_config.tree_files(site).items()}


def lab_digests(plan: LabPlan) -> dict[str, str]:
    """What a lab is made from: each of its own artifacts' digest (`vlab pxe`'s tree is not
    the lab's: a [[machine]] changed does not change a lab that is up, nor is a site of
    10,000 machines rendered for it)."""
    return {name: cache.key(text) for name, text in lab_artifacts(plan).items()}
