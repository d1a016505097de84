"""Render the plan into text artifacts: domain and network XML, NFS server config, scripts.

Templates in domains/ hold the layout; this module holds no layout of its own. Rendering is
pure: it reads no environment and writes nothing. validate() parses an XML document back with
lxml and checks it against libvirt's RelaxNG schema when installed; the lab's claim step
(vlab/verbs/claim.py) validates every document before anything is made and remembers a passed
check in vlab's cache (schema_stamp() is part of its key).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from vlab.build import efi
from vlab.errors import VlabError
from vlab.plan import site
from vlab.plan.lab import LabPlan, TerminalPlan
from vlab.serve.tftp import IPXE
from vlab.watch.guesttext import FAIL_MARKER, MARKER, READY_MARKER, SSH_MARKER

if TYPE_CHECKING:
    from lxml import etree

METADATA_NS = "urn:vlab:terminal:1"
SCHEMA_DIR = Path("/usr/share/libvirt/schemas")


class RenderError(VlabError):
    """A rendered artifact fails its own check: a value the scenario checks let through.
    Found before anything is made (lab.claim renders everything first): exit 2."""

    exit_code = 2


@functools.cache
def _env() -> jinja2.Environment:
    folder = Path(str(resources.files("vlab.domains")))
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("xml.j2", "xml", "html.j2")),
        keep_trailing_newline=True,
    )


def template(name: str, **values: object) -> str:
    return _env().get_template(name).render(marker=MARKER, fail_marker=FAIL_MARKER,
                                            ready_marker=READY_MARKER,
                                            ssh_marker=SSH_MARKER, **values)


def static(name: str) -> str:
    """A file of domains/ as it is: a static file, or a template's own text (what a cache
    key of its output must include)."""
    return (Path(str(resources.files("vlab.domains"))) / name).read_text()


def domain_xml(plan: LabPlan, terminal: TerminalPlan) -> str:
    firmware = efi.FIRMWARE.get((plan.arch, terminal.firmware.value))
    xml = template("libvirt/domain.xml.j2", plan=plan, t=terminal, node=plan.node(terminal.node),
                   ns=METADATA_NS, firmware=firmware)
    return xml


def xl_cfg(plan: LabPlan, terminal: TerminalPlan) -> str:
    return template("libvirt/xl.cfg.j2", plan=plan, t=terminal, node=plan.node(terminal.node))


def network_xml(plan: LabPlan, tftp_dir: Path | None = None) -> str:
    """The lab network; with a TFTP root it also serves PXE (pxelinux.0) to its guests."""
    xml = template("libvirt/network.xml.j2", plan=plan, tftp_dir=tftp_dir,
                   ipv6_gateway=plan.ipv6_gateway, shim=efi.SHIMS[plan.arch],
                   arch_codes=efi.CLIENT_ARCH[plan.arch], efi_tag=efi.EFI_TAG[plan.arch],
                   ipxe={f.value: name for f, (name, _path) in IPXE.items()},
                   http_image=site.http_image, ipxe_script=site.ipxe_script)
    return xml


def ganesha_conf(plan: LabPlan) -> str:
    return template("nfs/ganesha.conf.j2", plan=plan)


def exports_line(plan: LabPlan) -> str:
    return template("nfs/exports.j2", plan=plan)


def initrd_init() -> str:
    return template("initrd/initrd-init.sh.j2")


def root_init() -> str:
    return template("root/root-init.sh.j2")


def debian_ssh_files() -> dict[str, tuple[str, int]]:
    """What vlab adds to a Debian root it bootstraps, so that `vlab ssh` reaches it: path in
    the root -> (text, mode)."""
    return {
        "usr/local/sbin/vlab-ssh-keys": (template("root/debian-ssh-keys.sh.j2"), 0o755),
        "etc/systemd/system/vlab-ssh-keys.service": (static("root/debian-ssh-keys.service"), 0o644),
        "etc/ssh/sshd_config.d/vlab.conf": (static("root/debian-sshd.conf"), 0o644),
    }


def udhcpc_script() -> str:
    return static("initrd/udhcpc.sh")


def lease_script() -> str:
    """The busybox terminal's udhcpc script, for a lab with [lab] dhcp_lease."""
    return static("root/lease.sh")


@functools.cache
def _schema(kind: str) -> etree.RelaxNG | None:
    from lxml import etree

    path = SCHEMA_DIR / f"{kind}.rng"
    if not path.exists():
        return None
    return etree.RelaxNG(etree.parse(str(path)))


def schema_stamp(kind: str) -> str:
    """What identifies the installed schema of a kind (its file's size and mtime): a libvirt
    upgrade changes it."""
    try:
        st = (SCHEMA_DIR / f"{kind}.rng").stat()
    except OSError:
        return "no schema"
    return f"{st.st_size}:{st.st_mtime_ns}"


def xml_kind(name: str) -> str | None:
    """The libvirt schema an artifact of all_artifacts() answers to, by its name."""
    if name == "network.xml":
        return "network"
    return "domain" if name.startswith("domains/") and name.endswith(".xml") else None


def validate(xml: str, kind: str) -> None:
    """Parse with lxml and, where libvirt's schemas are installed, validate against them."""
    from lxml import etree

    try:
        doc = etree.fromstring(xml.encode())
    except etree.XMLSyntaxError as err:
        raise RenderError(f"rendered {kind} XML is not well-formed: {err}") from None
    schema = _schema(kind)
    if schema is not None and not schema.validate(doc):
        raise RenderError(f"rendered {kind} XML fails libvirt's {kind}.rng: {schema.error_log}")
