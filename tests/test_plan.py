"""The plan: deterministic, pinned MACs, collision-free, given MACs win."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import GOLDEN_DIRS, HERE, ROOT, plan_of

from vlab import scenario, state
from vlab.errors import ScenarioError
from vlab.plan.lab import Dirs
from vlab.plan.lease import NO_OTHER_LABS, lab_subnet, pinned_mac
from vlab.plan.make import make_plan

PLAN_IN_A_PROCESS = """
import pickle, sys
from conftest import plan_of
sys.stdout.buffer.write(pickle.dumps([plan_of(n) for n in sys.argv[1:]]))
"""


def test_same_scenario_same_plan_byte_for_byte_in_other_processes() -> None:
    """Two processes with other hash seeds, at other times: the same plan, byte for byte."""
    def plan_bytes(seed: str) -> bytes:
        return subprocess.run([sys.executable, "-c", PLAN_IN_A_PROCESS, *names], check=True,
                              cwd=ROOT, capture_output=True, env={
                                  **os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(HERE)}
                              ).stdout

    names = ["tiny", "many-hosts", "site", "dhcp-root", "xen", "pxe-terminal"]
    first = plan_bytes("1")
    time.sleep(1.1)
    assert first == plan_bytes("2")
    assert pickle.loads(first) == [plan_of(n) for n in names]  # and equal to this process's plan


def test_pinned_macs_are_qemu_range_and_stable() -> None:
    plan = plan_of("tiny")
    macs = [t.mac for t in plan.terminals]
    assert all(m.startswith("52:54:00:") for m in macs)
    assert len(set(macs)) == len(macs)
    assert macs[0] == pinned_mac("tiny", "t1")


def test_pinned_mac_depends_on_lab_and_terminal() -> None:
    assert pinned_mac("a", "t1") != pinned_mac("b", "t1")
    assert pinned_mac("a", "t1") != pinned_mac("a", "t2")


def _scenario(tmp_path: Path, terminals: str) -> scenario.Scenario:
    path = tmp_path / "s.toml"
    path.write_text(f'[lab]\nname = "lab"\n{terminals}')
    return scenario.load(path)


def test_given_mac_wins_and_pins_avoid_it(tmp_path: Path) -> None:
    taken = pinned_mac("lab", "t2")
    s = _scenario(tmp_path, f'[[terminal]]\nname = "t1"\nmac = "{taken}"\n'
                            '[[terminal]]\nname = "t2"\n')
    plan = make_plan(s, GOLDEN_DIRS)
    assert plan.terminals[0].mac == taken
    assert plan.terminals[1].mac != taken
    assert plan.terminals[1].mac == pinned_mac("lab", "t2", attempt=1)


def test_ips_follow_terminal_order_inside_the_lab_subnet(tmp_path: Path) -> None:
    s = _scenario(tmp_path, '[[terminal]]\nname = "a"\n[[terminal]]\nname = "b"\n')
    s = replace(s, lab=replace(s.lab, subnet=None))
    plan = make_plan(s, GOLDEN_DIRS)
    assert [t.ip for t in plan.terminals] == [
        str(plan.subnet.network_address + 10), str(plan.subnet.network_address + 11)]
    assert plan.gateway == str(plan.subnet.network_address + 1)


def test_root_override_as_the_page_does(tmp_path: Path) -> None:
    s = _scenario(tmp_path, '[[terminal]]\nname = "a"\nexport = "10.9.9.9:/foo/bar"\n'
                            '[[terminal]]\nname = "b"\nexport = "/other"\n')
    a, b = make_plan(s, GOLDEN_DIRS).terminals
    assert "root=10.9.9.9:/foo/bar" in a.cmdline.split()
    assert f"root={make_plan(s, GOLDEN_DIRS).nfs_address}:/other" in b.cmdline.split()


def test_kernel_command_line_carries_selinux_0_and_nfs_options() -> None:
    t = plan_of("tiny").terminals[0]
    words = t.cmdline.split()
    assert "selinux=0" in words and "console=ttyS0" in words
    # The lab's server listens where a site's does (2049, its own namespace): no port words.
    assert "rootflags=vers=4.2" in words and "root=10.213.1.2:/var/cache/vlab/roots/busybox" \
        in words and not any("port=" in w for w in words)
    # A lab with other hypervisor hosts keeps its server in the lab host's namespace, on
    # ports of its own, which its terminals' options name.
    many = plan_of("many-hosts")
    assert many.nfs_netns is None and many.nfs_address == many.gateway
    assert f"port={many.nfs_port}" in many.terminals[0].cmdline


def _lab(tmp_path: Path, name: str, extra: str = "") -> scenario.Scenario:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[lab]\nname = "{name}"\n{extra}[[terminal]]\nname = "t1"\n'
                    '[[terminal]]\nname = "t2"\n')
    return scenario.load(path)


def _twin_names() -> tuple[str, str]:
    """Two lab names whose own subnets are the same /24 (250 to choose from: easy to find)."""
    seen: dict[str, str] = {}
    for i in range(1000):
        name = f"lab{i}"
        subnet = str(lab_subnet(name))
        if subnet in seen:
            return seen[subnet], name
        seen[subnet] = name
    raise AssertionError("no two names share a subnet")


def test_a_second_lab_steers_clear_of_everything_the_first_holds(tmp_path: Path) -> None:
    first, second = _twin_names()
    dirs = Dirs(tmp_path / "cache", tmp_path / "state")
    a = make_plan(_lab(tmp_path, first), dirs)
    alone = make_plan(_lab(tmp_path, second), dirs)
    assert alone.subnet == a.subnet  # what would collide
    state.update(a.lab_dir, lease=state.lease_of(a))
    b = make_plan(_lab(tmp_path, second), dirs, state.taken(dirs.state, second))
    assert b.attempt > 0
    assert b.subnet != a.subnet and b.bridge != a.bridge and b.network != a.network
    # Each lab's server has a namespace and an address of its own, on the standard ports.
    assert b.nfs_netns != a.nfs_netns and b.nfs_address != a.nfs_address
    assert (a.nfs_port, a.mount_port) == (b.nfs_port, b.mount_port) == (2049, 20048)
    assert not {t.mac for t in b.terminals} & {t.mac for t in a.terminals}
    assert not {t.ip for t in b.terminals} & {t.ip for t in a.terminals}
    # The first lab's own plan ignores its own lease, and keeps it.
    assert make_plan(_lab(tmp_path, first), dirs, state.taken(dirs.state, first),
                     state.recorded_attempt(a.lab_dir)) == a
    # Recorded, the second lab keeps its lease even once the first has gone.
    state.update(b.lab_dir, lease=state.lease_of(b))
    state.remove(a.lab_dir)
    again = make_plan(_lab(tmp_path, second), dirs, state.taken(dirs.state, second),
                      state.recorded_attempt(b.lab_dir))
    assert again == b


def test_a_given_subnet_that_another_lab_holds_is_bad_input(tmp_path: Path) -> None:
    dirs = Dirs(tmp_path / "cache", tmp_path / "state")
    a = make_plan(_lab(tmp_path, "one", 'subnet = "10.213.7.0/24"\n'), dirs)
    state.update(a.lab_dir, lease=state.lease_of(a))
    with pytest.raises(ScenarioError) as err:
        make_plan(_lab(tmp_path, "two", 'subnet = "10.213.7.0/24"\n'), dirs,
                  state.taken(dirs.state, "two"))
    assert err.value.message() == (
        f"{tmp_path}/two.toml: lab.subnet: '10.213.7.0/24' is the subnet of lab 'one', which "
        "is up; fix: choose another subnet, or leave subnet out to get a free one")


@pytest.mark.parametrize("state", ["/tmp/a\nEXPORT { Path = /; }", "/tmp/with space",
                                   "/tmp/quote\"x", "/tmp/semi;colon"])
def test_an_export_path_ganesha_or_exports_cannot_carry_is_refused(tmp_path: Path,
                                                                   state: str) -> None:
    """The Debian root's export path comes from VLAB_CACHE_DIR: it goes unquoted into
    ganesha.conf (a newline would render a second EXPORT block), exports and root=."""
    sc = scenario.load(ROOT / "scenarios/debian-initramfs-tools.toml")
    with pytest.raises(ScenarioError, match="has a character that ganesha.conf"):
        make_plan(sc, Dirs(cache=Path(state), state=tmp_path), NO_OTHER_LABS, None, {})


def test_nfsv42_with_a_linux_that_reads_through_read_plus_is_refused() -> None:
    from conftest import plan_of

    from vlab.errors import ScenarioError
    from vlab.serve import nfsserver

    plan = plan_of("tiny")  # nfs_version = "4.2"
    nfsserver.refuse_broken_reads(plan, "6.1.0-57-amd64")  # bookworm's: no READ_PLUS
    with pytest.raises(ScenarioError, match=r'lab.nfs_version: "4.2" with the terminals\' '
                       r"Linux 6.12.43\+deb13-amd64.*issue #1188.*nfs_version = \"4.1\""):
        nfsserver.refuse_broken_reads(plan, "6.12.43+deb13-amd64")
    nfsserver.refuse_broken_reads(plan_of("e1000"), "6.12.43+deb13-amd64")  # 4.1


def test_a_domain_name_another_lab_holds_is_bad_input(tmp_path: Path) -> None:
    """Issue 27: names that collide only once vlab derives its own. Lab "a-b"'s terminal "t1"
    and lab "a"'s terminal "b-t1" are both the libvirt domain vlab-a-b-t1."""
    dirs = Dirs(tmp_path / "cache", tmp_path / "state")
    a = make_plan(_lab(tmp_path, "a-b"), dirs)
    state.update(a.lab_dir, lease=state.lease_of(a))
    path = tmp_path / "a.toml"
    path.write_text('[lab]\nname = "a"\n[[terminal]]\nname = "t9"\n[[terminal]]\n'
                    'name = "b-t1"\n')
    with pytest.raises(ScenarioError) as err:
        make_plan(scenario.load(path), dirs, state.taken(dirs.state, "a"))
    assert err.value.message() == (
        f"{path}: terminal[1].name: 'b-t1' of lab 'a' is the libvirt domain vlab-a-b-t1, "
        "which lab 'a-b' has (it is up); fix: rename the terminal or the lab")
    assert make_plan(scenario.load(path), dirs).terminals[1].domain == "vlab-a-b-t1"


def test_the_nfs_servers_mac_is_pinned_per_lab_and_locally_administered() -> None:
    """A server started again answers at the MAC the terminals' neighbour caches hold."""
    from vlab.plan.lease import server_mac

    assert server_mac("tiny") == server_mac("tiny") != server_mac("one")
    first = int(server_mac("tiny").split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast
