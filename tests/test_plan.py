"""The plan: deterministic, pinned MACs, collision-free, given MACs win."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

from conftest import GOLDEN_DIRS, plan_of

from vlab import scenario
from vlab.plan import make_plan, pinned_mac


def test_same_scenario_same_plan_byte_for_byte() -> None:
    assert pickle.dumps(plan_of("tiny")) == pickle.dumps(plan_of("tiny"))


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
    s = _scenario(tmp_path, '[[terminal]]\nname = "a"\nroot = "10.9.9.9:/foo/bar"\n'
                            '[[terminal]]\nname = "b"\nroot = "/other"\n')
    a, b = make_plan(s, GOLDEN_DIRS).terminals
    assert (a.root_server, a.root_path) == ("10.9.9.9", "/foo/bar")
    assert "root=10.9.9.9:/foo/bar" in a.cmdline.split()
    assert b.root_server == make_plan(s, GOLDEN_DIRS).gateway and b.root_path == "/other"


def test_kernel_command_line_carries_selinux_0_and_nfs_options() -> None:
    t = plan_of("tiny").terminals[0]
    words = t.cmdline.split()
    assert "selinux=0" in words and "console=ttyS0" in words
    assert any(w.startswith("rootflags=vers=4.2,port=") for w in words)
