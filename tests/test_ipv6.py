"""IPv6 labs: terminals with SLAAC addresses (the lab's prefix and their pinned MAC) mount
their root from nfs-ganesha over IPv6; dual-stack ones have a DHCPv4 lease too."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import GOLDEN_DIRS, ROOT
from test_boot import vlab

from vlab import scenario
from vlab.artifacts import pxe_config, templates
from vlab.errors import ScenarioError
from vlab.plan.lab import Dirs, slaac_address
from vlab.plan.make import make_plan
from vlab.serve import firewall


def test_a_terminals_ipv6_address_is_its_prefix_and_modified_eui64() -> None:
    prefix = ipaddress.IPv6Network("fd00:213:6b::/64")
    # RFC 4291 appendix A: flip the universal/local bit, ff:fe in the middle.
    assert slaac_address(prefix, "52:54:00:1f:94:fc") == "fd00:213:6b:0:5054:ff:fe1f:94fc"
    assert slaac_address(prefix, "00:16:3e:00:00:01") == "fd00:213:6b:0:216:3eff:fe00:1"


def test_an_ipv6_lab_mounts_over_ipv6_and_has_no_dhcpv4() -> None:
    plan = make_plan(scenario.load(ROOT / "scenarios" / "ipv6.toml"), GOLDEN_DIRS)
    (t,) = plan.terminals
    assert t.ip == "" and t.ip6.startswith(plan.ipv6_subnet.removesuffix("::/64") + ":")
    assert f"root=[{plan.nfs_address6}]:" in t.cmdline and "ip=::::t1:eth0:auto6" in t.cmdline
    net = templates.network_xml(plan)
    assert "<dhcp>" not in net and f"<ip family='ipv6' address='{plan.ipv6_gateway}'" in net
    assert plan.ipv6_subnet in templates.ganesha_conf(plan)
    dual = make_plan(scenario.load(ROOT / "scenarios" / "dual-stack.toml"), GOLDEN_DIRS)
    (d,) = dual.terminals
    assert d.ip and d.ip6 and "ip=" not in d.cmdline and f"root=[{dual.nfs_address6}]:" in \
        d.cmdline and "<dhcp>" in templates.network_xml(dual)


@pytest.mark.parametrize(("extra", "message"), [
    ('[initrd]\nbuilder = "dracut"\n[root]\nsource = "dir"\npath = "root"\n',
     'lab.addresses: "ipv6" with the dracut initrd'),
    ('[[node]]\nname = "n1"\nuri = "qemu+ssh://root@h/system"\nnetwork = "default"\n'
     'nfs_server = "192.168.1.5"\n', 'lab.addresses: "ipv6" in a lab with Xen or [[node]]s'),
    ('[[terminal]]\nname = "t2"\nboot = "pxe"\n', 'terminal[1].firmware: "bios" in an IPv6-only '
     "lab: SeaBIOS's iPXE ROM does no PXE over IPv6"),
])
def test_what_an_ipv6_lab_does_not_do_is_refused_by_name(tmp_path: Path, extra: str,
                                                         message: str) -> None:
    (tmp_path / "root").mkdir()
    path = tmp_path / "s.toml"
    path.write_text('[lab]\nname = "v6"\naddresses = "ipv6"\n[[terminal]]\nname = "t1"\n'
                    + extra)
    with pytest.raises(ScenarioError) as err:
        scenario.load(path)
    assert message in str(err.value)


@pytest.mark.boot
def test_ipv6_only_and_dual_stack_terminals_mount_their_root_over_ipv6(lab_down) -> None:  # type: ignore[no-untyped-def]
    """The IPv6-only lab's terminal gets the address SLAAC makes of its pinned MAC (no DHCPv4
    on its network), its host name from ip=, and mounts [server]:/path over TCP on IPv6; the
    dual-stack one has its pinned DHCPv4 lease too. vlab ssh reaches each (over IPv6 where
    that is all it has)."""
    for path in ("scenarios/ipv6.toml", "scenarios/dual-stack.toml"):
        lab_down.append(path)
        proc = vlab("up", path, "--json", timeout=600)
        assert proc.returncode == 0, proc.stderr
        (t,) = json.loads(proc.stdout)["terminals"]
        plan = make_plan(scenario.load(ROOT / path), Dirs.from_env())
        (p,) = plan.terminals
        assert t["verdict"] == "ok", t
        assert t["proof"]["server"] == plan.nfs_address6, t["proof"]
        assert "proto=tcp6" in t["proof"]["options"], t["proof"]
        assert f"clientaddr={p.ip6}," in t["proof"]["options"], (p.ip6, t["proof"])
        log = Path(t["console_log"]).read_text(errors="replace")
        assert f"vlab-initrd: eth0 is {p.ip6}/64 (SLAAC" in log, log[-3000:]
        leased = f"lease of {p.ip} obtained" in log
        assert leased if path.endswith("dual-stack.toml") else "udhcpc" not in log, log[-3000:]
        ran = vlab("ssh", path, "t1", "--", "hostname; ip -6 addr show dev eth0", timeout=60)
        assert ran.returncode == 0 and ran.stdout.startswith("t1\n") and p.ip6 in ran.stdout, \
            ran.stdout + ran.stderr
        # the lab's IPv6 prefix answers on its bridge only, as its IPv4 subnet does
        guarded = [r for r in firewall.rules(plan.netns) if plan.ipv6_subnet in r]
        assert guarded and f"! -i {plan.bridge}" in guarded[0], firewall.rules(plan.netns)
        assert vlab("down", path, timeout=120).returncode == 0
        assert not [r for r in firewall.rules(plan.netns) if plan.ipv6_subnet in r]


def test_the_ipv6_snippets_are_what_dhcpd_and_dnsmasq_take(tmp_path: Path) -> None:
    """A dual-stack site's snippets: dnsmasq's (--test) with DHCPv4's next server and
    DHCPv6's boot file URL by client architecture (option 61), and ISC dhcpd -6's own check of
    dhcpd6.conf in a subnet6 as a site has it; the check can fail."""
    site = make_plan(scenario.load(ROOT / "scenarios" / "site-ipv6.toml"), GOLDEN_DIRS).site
    assert site is not None and site.tftp4 == "10.213.82.2" and site.tftp6 == "[fd00:213:52::2]"
    files = pxe_config.shared_files(site)
    dnsmasq = files["vlab-site/dnsmasq.conf"]
    assert "dhcp-match=set:efi-x86_64-v6,option6:61,00:07" in dnsmasq
    assert "option6:bootfile-url,tftp://[fd00:213:52::2]/shimx64.efi" in dnsmasq
    assert "pxelinux.0,,10.213.82.2" in dnsmasq
    snippet = tmp_path / "dnsmasq.conf"
    snippet.write_text(dnsmasq)
    checked = subprocess.run(["dnsmasq", "--test", "--conf-file=" + str(snippet)],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and "syntax check OK" in checked.stderr, checked.stderr
    conf = tmp_path / "dhcpd6.conf"
    subnet6 = "subnet6 fd00:213:52::/64 { range6 fd00:213:52::100 fd00:213:52::1ff; }\n"
    conf.write_text(subnet6 + files["vlab-site/dhcpd6.conf"])
    checked = subprocess.run(["dhcpd", "-6", "-t", "-cf", str(conf)], capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    conf.write_text(subnet6 + files["vlab-site/dhcpd6.conf"].replace("bootfile-url \"",
                                                                     "bootfile-ur \"", 1))
    assert subprocess.run(["dhcpd", "-6", "-t", "-cf", str(conf)], capture_output=True,
                          timeout=30).returncode != 0


@pytest.mark.boot
def test_a_uefi_twin_boots_by_pxe_over_ipv6_and_a_bios_twin_over_ipv4(lab_down) -> None:  # type: ignore[no-untyped-def]
    """vlab pxe --twins of a dual-stack site: the UEFI twins (the machine's and the default
    one) boot by OVMF's PXE over IPv6 (DHCPv6's boot file URL for architecture 7, then shim,
    GRUB and their files over TFTP on IPv6); the BIOS twins by pxelinux over IPv4; every one
    mounts the root over IPv6 at its SLAAC address."""
    path = "scenarios/site-ipv6.toml"
    lab_down.append(path)
    tftp_dir = Path("/var/lib/vlab/test-tftp/site-ipv6")
    shutil.rmtree(tftp_dir, ignore_errors=True)
    proc = vlab("pxe", path, "--tftp-dir", str(tftp_dir), "--twins", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr
    plan = make_plan(scenario.load(ROOT / path), Dirs.from_env(), twins=True)
    twins = {t["name"]: t for t in json.loads(proc.stdout)["twins"]["terminals"]}
    assert set(twins) == {"pxe-efi6", "pxe-pc4", "pxe-default", "pxe-default-uefi"}
    for t in plan.terminals:
        got = twins[t.name]
        assert got["verdict"] == "ok", got
        assert got["proof"]["server"] == plan.nfs_address6 and \
            f"clientaddr={t.ip6}," in got["proof"]["options"], got["proof"]
        log = Path(got["console_log"]).read_text(errors="replace")
        if t.firmware == "uefi":
            assert ">>Start PXE over IPv6" in log and "Start PXE over IPv4" not in log, log[:3000]
            assert f"configuration from (tftp,{plan.ipv6_gateway})/grub" in log, log[:3000]
            # the boot report's server-side view: its DHCPv6 answer and its files over TFTP
            seen = "\n".join(got["seen"])
            assert "option: 59 bootfile-url" in seen and "RTR-SOLICIT" in seen, seen
            assert re.search(r"tftp: sent \S+/vmlinuz to fd00:213:52:", seen), seen
        else:
            assert "PXELINUX" in log, log[:3000]
    served = (Dirs.from_env().state / "labs/v6site/console/dnsmasq.log").read_text()
    assert "option: 59 bootfile-url  tftp://[" in served and "tags: efi-x86_64-v6" in served
    assert re.search(r"sent \S+/shimx64\.efi to fd00:213:52:", served), served[-3000:]
