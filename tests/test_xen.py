"""Xen terminals, verified as far as a machine without a Xen hypervisor allows: golden XML and
xl configs (test_render), libvirt's schema and test driver (test_render), the xl config read
by a strict parser of the documented xl.cfg(5) format, and the KVM and Xen plans differing
only where the hypervisor must. (`xl -N create` needs a libxl context, i.e. /dev/xen/privcmd:
it cannot dry-run here.)"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from conftest import GOLDEN_DIRS, ROOT, plan_of

from vlab import scenario
from vlab.artifacts import templates
from vlab.nodes import virt
from vlab.plan.cmdline import nfs_client_id
from vlab.plan.make import make_plan

# xl.cfg(5): KEY = VALUE, VALUE a "string", a number, or a [ list, of, "strings" ].
XL_KEYS = {"name", "type", "memory", "vcpus", "kernel", "ramdisk", "extra", "vif",
           "on_poweroff", "on_reboot", "on_crash"}
STRING = r'"(?:[^"\\]|\\.)*"'
LINE = re.compile(rf"^(?P<key>[a-z_]+) = (?P<value>{STRING}|\d+|\[ {STRING}(?:, {STRING})* \])$")


def parse_xl(text: str) -> dict[str, object]:
    """A strict reader of the xl config format: anything it does not know is an error."""
    out: dict[str, object] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            raise ValueError(f"line {n}: not KEY = VALUE: {line!r}")
        key, value = m["key"], m["value"]
        if key not in XL_KEYS or key in out:
            raise ValueError(f"line {n}: unknown or repeated key {key!r}")
        if value.startswith("["):
            out[key] = re.findall(STRING, value)
        elif value.startswith('"'):
            out[key] = value[1:-1]
        else:
            out[key] = int(value)
    return out


def test_xl_config_is_the_pages_terminal_cfg_with_a_pinned_xen_mac() -> None:
    plan = plan_of("xen")
    (t,) = plan.terminals
    cfg = parse_xl(templates.xl_cfg(plan, t))
    assert cfg["name"] == t.domain and cfg["type"] == "pv"
    assert cfg["memory"] == 512 and cfg["vcpus"] == 1
    assert cfg["kernel"] == str(plan.kernel_path) and cfg["ramdisk"] == str(plan.initrd_path)
    extra = str(cfg["extra"]).split()
    assert "selinux=0" in extra and "console=hvc0" in extra
    assert cfg["vif"] == [f'"mac={t.mac},bridge={plan.bridge}"']
    assert t.mac.startswith("00:16:3e:")


def test_the_strict_reader_rejects_what_xl_would() -> None:
    with pytest.raises(ValueError, match="not KEY = VALUE"):
        parse_xl('vif = [ mac=1 ]\n')
    with pytest.raises(ValueError, match="unknown or repeated"):
        parse_xl('memroy = 5\n')


def test_xen_domain_is_a_pv_guest_with_direct_kernel_boot_and_xen_console() -> None:
    plan = plan_of("xen")
    xml = templates.domain_xml(plan, plan.terminals[0])
    assert "<domain type='xen'>" in xml and "machine='xenpv'>linux</type>" in xml
    assert "<target type='xen' port='0'/>" in xml
    assert "<model" not in xml and "console=hvc0" in xml


def test_the_xen_domain_is_one_libvirt_takes_for_a_xen_pv_guest() -> None:
    """libvirt's test driver has Xen's os type: the rendered domain, its type made the test
    driver's, is defined and read back with its PV console, a console vlab relays (no
    <log>: QEMU's alone, libxl writes no log file)."""
    plan = plan_of("xen")
    xml = templates.domain_xml(plan, plan.terminals[0]).replace("<domain type='xen'>",
                                                             "<domain type='test'>")
    conn = virt.connect("test:///default")
    try:
        dom = conn.defineXML(xml)
        back = dom.XMLDesc()
        dom.undefine()
    finally:
        virt.close(conn)
    assert "<type arch='x86_64' machine='xenpv'>linux</type>" in back, back
    assert "<target type='xen' port='0'/>" in back, back
    assert "<log " not in back and f"<mac address='{plan.terminals[0].mac}'/>" in back


def test_kvm_and_xen_plans_differ_only_where_the_hypervisor_must(tmp_path: Path) -> None:
    text = (ROOT / "scenarios/xen.toml").read_text()
    xen_path, kvm_path = tmp_path / "xen.toml", tmp_path / "kvm.toml"
    xen_path.write_text(text)
    kvm_path.write_text(text.replace('hypervisor = "xen"', 'hypervisor = "kvm"'))
    xen = make_plan(scenario.load(xen_path), GOLDEN_DIRS)
    kvm = make_plan(scenario.load(kvm_path), GOLDEN_DIRS)
    lab_diff = {f.name for f in dataclasses.fields(xen)
                if getattr(xen, f.name) != getattr(kvm, f.name)}
    lab_diff.discard("scenario")  # two files, one text apart
    assert lab_diff == {"uri", "hypervisor", "lab_host", "nic_drivers",
                        "terminals", "nodes"}  # nodes: the lab's own node has the lab's uri
    assert xen.domain_type == "xen" and kvm.domain_type == "kvm"
    assert [h.uri for h in xen.nodes] == [xen.uri] and [h.uri for h in kvm.nodes] == [kvm.uri]
    (tx,), (tk,) = xen.terminals, kvm.terminals
    t_diff = {f.name for f in dataclasses.fields(tx) if getattr(tx, f.name) != getattr(tk, f.name)}
    assert t_diff == {"mac", "nic_model", "cmdline"}
    # The console, and the NFSv4 client id that follows the MAC.
    assert tx.cmdline.replace("console=hvc0", "console=ttyS0").replace(
        nfs_client_id(tx.mac), nfs_client_id(tk.mac)) == tk.cmdline
    assert xen.nic_drivers[0].value == "xen-netfront" and kvm.nic_drivers[0].value == "virtio_net"
