"""Several hypervisor hosts: placement (pure), and for real a second libvirt host on this
machine (tests/simhost.py: own network and mount namespaces, libvirtd, sshd) reached through
qemu+ssh:// and SFTP, one terminal on each host over one NFS root."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
import simhost
from conftest import ROOT
from test_boot import leftovers, plan_for, up, up_until, vlab

from vlab import scenario
from vlab.nodes.ship import Target
from vlab.plan.lab import LabPlan
from vlab.plan.make import place
from vlab.watch.sshkeys import fingerprint

TWO = "tests/scenarios/two-hosts.toml"
SIM_DIR = Path("/var/tmp/vlab-test-h2")  # the scenario names the test key in it


def _scenario(tmp_path: Path, text: str) -> scenario.Scenario:
    path = tmp_path / "s.toml"
    path.write_text('[lab]\nname = "lab"\n' + text)
    return scenario.load(path)


HOSTS = """
[[node]]
name = "a"
uri = "qemu+ssh://root@a.example/system"
network = "default"
nfs_server = "10.0.0.1"
capacity = 2

[[node]]
name = "b"
uri = "qemu+ssh://root@b.example/system"
bridge = "br0"
nfs_server = "10.0.0.1"
"""


def test_placement_follows_free_memory_and_never_exceeds_capacity(tmp_path: Path) -> None:
    terminals = "".join(f'[[terminal]]\nname = "t{i}"\nmemory = 1024\n' for i in range(6))
    sc = _scenario(tmp_path, HOSTS + terminals)
    # a has by far the most memory, but room for two terminals only.
    placed = place(sc, {"local": 3000, "a": 100_000, "b": 5000})
    assert [placed[f"t{i}"] for i in range(6)] == ["a", "a", "b", "b", "local", "b"]


def test_a_named_host_wins_and_counts_against_its_capacity(tmp_path: Path) -> None:
    terminals = ('[[terminal]]\nname = "x"\n[[terminal]]\nname = "y"\nnode = "a"\n'
                 '[[terminal]]\nname = "z"\nnode = "a"\n')
    placed = place(_scenario(tmp_path, HOSTS + terminals), {"local": 1, "a": 9999, "b": 2})
    assert placed == {"x": "b", "y": "a", "z": "a"}


def test_pxe_and_uefi_terminals_stay_on_the_lab_host(tmp_path: Path) -> None:
    # A PXE terminal boots from the lab network's TFTP tree, a UEFI one from the lab host's
    # OVMF: neither goes where the free memory is.
    terminals = ('[[terminal]]\nname = "p"\nboot = "pxe"\n'
                 '[[terminal]]\nname = "u"\nfirmware = "uefi"\n[[terminal]]\nname = "k"\n')
    placed = place(_scenario(tmp_path, HOSTS + terminals), {"local": 1, "a": 9999, "b": 2})
    assert placed == {"p": "local", "u": "local", "k": "a"}


def test_a_lab_that_is_up_keeps_its_terminals_and_places_the_ones_it_gained(
        tmp_path: Path) -> None:
    # t0 runs on b (recorded when the lab came up); t1 is new in the scenario: placed as in
    # a new lab, never dropped onto the lab host by default.
    terminals = "".join(f'[[terminal]]\nname = "t{i}"\n' for i in range(2))
    sc = _scenario(tmp_path, HOSTS + terminals)
    assert place(sc, {"local": 1, "a": 9999, "b": 2}, kept={"t0": "b"}) == {"t0": "b", "t1": "a"}
    # A recorded host the scenario no longer has is not kept.
    assert place(sc, {"local": 1, "a": 9999, "b": 2}, kept={"t0": "gone"})["t0"] == "a"
    xen = _scenario(tmp_path, XEN_NODE + terminals)
    assert place(xen, {"local": 99999, "dom0": 1}, kept={"t0": "dom0"}) == {
        "t0": "dom0", "t1": "dom0"}


XEN_NODE = """
hypervisor = "xen"
[[node]]
name = "dom0"
uri = "xen+ssh://root@dom0.example/system"
bridge = "xenbr0"
nfs_server = "10.0.0.1"
"""


def test_a_xen_labs_terminals_go_to_its_xen_nodes_only(tmp_path: Path) -> None:
    # The lab host of a Xen lab with [[node]]s runs QEMU: however much memory it has free.
    terminals = "".join(f'[[terminal]]\nname = "t{i}"\n' for i in range(3))
    sc = _scenario(tmp_path, XEN_NODE + terminals)
    assert set(place(sc, {"local": 99999, "dom0": 1}).values()) == {"dom0"}
    assert sc.lab.uri == "qemu:///system"


def test_without_figures_every_host_counts_equal_and_the_plan_is_stable(tmp_path: Path) -> None:
    terminals = "".join(f'[[terminal]]\nname = "t{i}"\n' for i in range(3))
    sc = _scenario(tmp_path, HOSTS + terminals)
    assert place(sc) == place(sc) == {"t0": "local", "t1": "a", "t2": "b"}


def test_ssh_uri_target() -> None:
    t = Target.of("qemu+ssh://vlab@hv3.example:2222/system?keyfile=/etc/vlab/k&no_tty=1")
    assert (t.user, t.address, t.port, t.keyfile, t.known_as) == (
        "vlab", "hv3.example", 2222, "/etc/vlab/k", "[hv3.example]:2222")
    t = Target.of("qemu+ssh://hv2/system")
    assert (t.user, t.port, t.keyfile, t.known_as) == ("root", 22, None, "hv2")


# ---- real: a second libvirt host --------------------------------------------------------


@pytest.fixture(scope="module")
def second_host() -> Iterator[simhost.SimHost]:
    """The lab host (kept up for the module: the veth's other end is in it) and the second
    host; both go away afterwards if the lab host was not there before."""
    had_lab_host = Path("/run/netns/vlab-host").exists()
    assert vlab("lab-host", "up").returncode == 0
    host = simhost.start(SIM_DIR)
    try:
        yield host
    finally:
        vlab("down", TWO)
        simhost.stop(SIM_DIR)
        if not had_lab_host:
            vlab("lab-host", "down")


def _on_second_host(path: str) -> Path:
    """A path as the second host sees it (through its libvirtd's root, in its namespace)."""
    pid = json.loads((SIM_DIR / "pids.json").read_text())["libvirtd"]
    return Path(f"/proc/{pid}/root{path}")


def _left(plan: LabPlan) -> list[str]:
    """leftovers(), but the lab host stays up for this module on purpose (the veth's end)."""
    return [x for x in leftovers(plan) if x != f"network namespace {plan.netns}"]


def _up_two(lab_down: list[str]) -> tuple[LabPlan, subprocess.CompletedProcess[str],
                                          dict[str, Any]]:
    lab_down.append(TWO)
    plan = plan_for(TWO)
    proc, rep = up(TWO)
    assert proc.returncode == 0, proc.stderr
    return plan, proc, rep


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.boot
def test_a_terminal_on_each_host_boots_over_the_same_nfs_root(second_host, lab_down) -> None:  # type: ignore[no-untyped-def]
    plan, proc, rep = _up_two(lab_down)
    by_name = {t["name"]: t for t in rep["terminals"]}
    assert by_name["t1"]["node"] == "local" and by_name["t2"]["node"] == "h2"
    assert all(t["verdict"] == "ok" for t in rep["terminals"]), proc.stderr
    assert [[c["ok"] for c in t["probes"]] for t in rep["terminals"]] == [[True], [True]]
    # Both mounted the one export; t2 through the address given for h2, from h2's network.
    export = str(plan.export_path)
    assert by_name["t1"]["proof"]["export"] == by_name["t2"]["proof"]["export"] == export
    assert by_name["t2"]["proof"]["server"] == "10.214.0.1"
    assert by_name["t2"]["ip"].startswith("10.214.1.")
    # The kernel and initrd really crossed over: h2 holds its own copies, byte for byte.
    h2 = plan.node("h2")
    assert _sha256(_on_second_host(str(h2.initrd_path))) == _sha256(plan.initrd_path)
    # A TCG lab ships the uncompressed kernel it boots here (a KVM lab the compressed one).
    assert _sha256(_on_second_host(str(h2.kernel_path))) == _sha256(plan.kernel_path)
    assert not Path(str(h2.kernel_path)).exists()  # not on this machine's own disk
    assert "host h2: shipped 2 file(s)" in proc.stderr
    status = json.loads(vlab("status", TWO, "--json").stdout)
    assert [(t["name"], t["node"], t["state"]) for t in status["terminals"]] == [
        ("t1", "local", "running"), ("t2", "h2", "running")]
    # SSH into the terminal on h2, its host key pinned from the relayed console.
    ssh = vlab("ssh", TWO, "t2", "--", "grep ' / nfs' /proc/mounts")  # one word, as with ssh
    assert ssh.returncode == 0 and f"10.214.0.1:{export}" in ssh.stdout, ssh.stderr
    # A file vlab did not ship, in its folder there: vlab down removes only what it shipped.
    theirs = _on_second_host(str(h2.files_dir)) / "theirs.txt"
    theirs.write_text("not vlab's\n")
    down = vlab("down", TWO)
    assert down.returncode == 0, down.stderr
    assert "destroyed domain vlab-twohosts-t2 on h2" in down.stderr
    assert theirs.read_text() == "not vlab's\n"
    assert sorted(p.name for p in theirs.parent.iterdir()) == ["theirs.txt"]
    # Without vlab's mark the folder is not vlab's: up refuses to ship into it.
    again = vlab("up", TWO, timeout=900)
    assert again.returncode == 3 and "is not a folder vlab made" in again.stderr, again.stderr
    assert vlab("down", TWO).returncode == 0
    assert theirs.read_text() == "not vlab's\n"
    theirs.unlink()
    theirs.parent.rmdir()
    assert _left(plan) == []


@pytest.mark.boot
def test_down_tolerates_a_host_that_does_not_answer(second_host, lab_down) -> None:  # type: ignore[no-untyped-def]
    plan, _proc, _rep = _up_two(lab_down)
    simhost.stop_sshd(SIM_DIR)
    try:
        status = vlab("status", TWO)
        assert "host h2: does not answer" in status.stdout
        down = vlab("down", TWO)
        assert down.returncode == 3
        assert ("host h2 does not answer" in down.stderr
                and "left there: domain vlab-twohosts-t2, folder "
                f"{plan.node('h2').files_dir}" in down.stderr
                and f"run vlab down {TWO} again once it answers" in down.stderr), down.stderr
        assert "destroyed domain vlab-twohosts-t1" in down.stderr  # this machine's part went
        assert json.loads(vlab("status", TWO, "--json").stdout)["network"] is None
    finally:
        simhost.start_sshd(SIM_DIR)
    down = vlab("down", TWO)
    assert down.returncode == 0, down.stderr
    assert "destroyed domain vlab-twohosts-t2 on h2" in down.stderr
    assert _left(plan) == []


@pytest.mark.boot
def test_an_unknown_or_changed_host_key_is_refused_before_anything_is_made(second_host) -> None:  # type: ignore[no-untyped-def]
    plan = plan_for(TWO)
    host_pub = SIM_DIR / "ssh_host_ed25519_key.pub"
    kind, blob = host_pub.read_text().split()[:2]
    expected = fingerprint(paramiko.PKey.from_type_string(kind, base64.b64decode(blob)))
    simhost.distrust()
    try:
        proc = vlab("up", TWO)
        assert proc.returncode == 3
        assert (f"host h2 (root@10.214.0.2) is not in known_hosts: its SSH host key is "
                f"ssh-ed25519 {expected}" in proc.stderr
                and "ssh-keyscan -p 22 -t ssh-ed25519 10.214.0.2 >> ~/.ssh/known_hosts"
                in proc.stderr), proc.stderr
        assert not (plan.lab_dir / "state.json").exists()
        # A different key on file for that address: refused as well, never replaced.
        other = SIM_DIR / "other_key"
        other.unlink(missing_ok=True)
        Path(f"{other}.pub").unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                       check=True)
        simhost.trust(Path(f"{other}.pub"))
        proc = vlab("up", TWO)
        assert proc.returncode == 3
        assert (f"presented SSH host key {expected}, but known_hosts holds" in proc.stderr
                and "ssh-keygen -R 10.214.0.2" in proc.stderr), proc.stderr
        assert not (plan.lab_dir / "state.json").exists()
    finally:
        simhost.trust(host_pub)


@pytest.mark.boot
def test_sigkill_mid_up_leaves_nothing_down_cannot_remove_on_either_host(second_host,  # type: ignore[no-untyped-def]
                                                                          lab_down) -> None:
    lab_down.append(TWO)
    plan = plan_for(TWO)
    proc, seen = up_until(TWO, "boot t2")
    proc.kill()
    proc.wait()
    status = json.loads(vlab("status", TWO, "--json").stdout)
    assert {t["name"]: t["state"] for t in status["terminals"]}["t2"] == "running", seen
    assert _on_second_host(str(plan.node("h2").files_dir)).exists()
    down = vlab("down", TWO)
    assert down.returncode == 0, down.stderr
    assert "destroyed domain vlab-twohosts-t2 on h2" in down.stderr
    assert not _on_second_host(str(plan.node("h2").files_dir)).exists()
    assert _left(plan) == []


@pytest.mark.boot
def test_a_network_the_other_host_does_not_have_is_bad_input(second_host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / TWO).read_text().replace('network = "h2lab"', 'network = "nope"'))
    proc = vlab("up", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"vlab: {bad}: node[0].network: 'nope' is not an active libvirt network on h2; "
        f"fix: start it there (virsh -c {second_host.uri} net-start nope), or name one that "
        "virsh net-list shows"), proc.stderr
    assert not (plan_for(TWO).lab_dir / "state.json").exists()


@pytest.mark.boot
def test_down_of_a_lab_never_up_asks_no_other_host_and_records_nothing() -> None:
    """No second host here (its namespace is not there): a lab that was never brought up
    has nothing on it, so `vlab down` neither calls it nor records a down-incomplete lab
    (which kept the lab host up for every lab after it)."""
    plan = plan_for(TWO)
    assert not (plan.lab_dir / "state.json").exists()
    proc = vlab("down", TWO)
    assert proc.returncode == 0, proc.stderr
    assert "does not answer" not in proc.stderr
    assert not (plan.lab_dir / "state.json").exists()
