"""Every failure verdict, provoked for real: a real libvirtd boots a real kernel against a real
nfs-ganesha, and the verdict is read off the real console. Where the fault cannot be written
in a scenario (a server that exports to another subnet, an initrd without the NIC driver, a
network without DHCP), the test swaps one piece of vlab's pipeline for a broken one, in
process; everything downstream of it is real. Needs root."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_boot import leftovers, plan_for, vlab

from vlab import cli, initrd, nfsroot, render
from vlab.plan import Dirs, LabPlan

pytestmark = pytest.mark.boot


def _scenario(tmp_path: Path, name: str, body: str, lab_down: list[str]) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[lab]\nname = "{name}"\n{body}')
    lab_down.append(str(path))
    return str(path)


def _boots_to(verdict: str, path: str,
              capsys: pytest.CaptureFixture[str] | None = None) -> tuple[dict[str, Any], str]:
    """vlab up (in this process when a piece of it was swapped), the one terminal's report
    with the verdict asserted (and vlab's stderr), then vlab down and nothing left."""
    plan = plan_for(path)
    if capsys is not None:
        rc = cli.main(["up", path, "--json"])
        out, err = capsys.readouterr()
    else:
        proc = vlab("up", path, "--json")
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    (t,) = json.loads(out)["terminals"]
    assert rc == 1 and t["verdict"] == verdict, t
    assert vlab("down", path).returncode == 0
    assert leftovers(plan) == []
    return t, err


TERMINAL = '[[terminal]]\nname = "t1"\n'


def test_export_to_another_subnet_is_nfs_access_denied(
    tmp_path: Path, lab_down: list[str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # NFSv3: its MOUNT protocol answers "access denied"; NFSv4 hides an export from a client
    # it is not for, so the same fault there reads as nfs-no-such-export.
    path = _scenario(tmp_path, "denied", 'nfs_version = "3"\n' + TERMINAL, lab_down)
    other = ipaddress.IPv4Network("10.213.251.0/24")
    real = render.ganesha_conf

    def exported_elsewhere(plan: LabPlan) -> str:
        return real(replace(plan, nfs_clients=(other,)))

    monkeypatch.setattr(render, "ganesha_conf", exported_elsewhere)
    t, err = _boots_to("nfs-access-denied", path, capsys)
    assert "Permission denied" in t["line"]


def test_a_server_without_the_asked_minor_version_is_nfs_version_unsupported(
    tmp_path: Path, lab_down: list[str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _scenario(tmp_path, "oldserver", 'nfs_version = "4.2"\n' + TERMINAL, lab_down)
    real = render.ganesha_conf

    def only_v4_0(plan: LabPlan) -> str:
        return real(plan).replace("NFSv4 {", "NFSv4 {\n    Minor_Versions = 0;", 1)

    monkeypatch.setattr(render, "ganesha_conf", only_v4_0)
    t, err = _boots_to("nfs-version-unsupported", path, capsys)


def test_a_network_without_dhcp_is_dhcp_failed(
    tmp_path: Path, lab_down: list[str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _scenario(tmp_path, "nodhcp", TERMINAL, lab_down)
    real = render.network_xml

    def without_dhcp(plan: LabPlan, *args: Any, **kwargs: Any) -> str:
        return re.sub(r"<dhcp>.*?</dhcp>", "", real(plan, *args, **kwargs), flags=re.S)

    monkeypatch.setattr(render, "network_xml", without_dhcp)
    t, err = _boots_to("dhcp-failed", path, capsys)
    assert "no DHCP lease" in t["line"]


def test_an_initrd_without_the_nic_driver_is_nic_driver_missing(
    tmp_path: Path, lab_down: list[str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _scenario(tmp_path, "nonic", TERMINAL, lab_down)
    real = initrd.modules_for

    def nfs_only(plan: LabPlan) -> list[str]:
        return [m for m in real(plan) if m.startswith("nfs")]

    monkeypatch.setattr(initrd, "modules_for", nfs_only)
    t, err = _boots_to("nic-driver-missing", path, capsys)
    assert "no network interface appeared" in t["line"]


def test_a_server_address_where_nothing_answers_is_nfs_unreachable(
    tmp_path: Path, lab_down: list[str]
) -> None:
    path = _scenario(tmp_path, "nobody", 'subnet = "10.213.249.0/24"\n' + TERMINAL
                     + 'root = "10.213.249.200:/srv/root"\n', lab_down)
    t, err = _boots_to("nfs-unreachable", path)


def _root_with_init(tmp_path: Path, init: str) -> Path:
    """A copy of the busybox root whose /sbin/init is the given script."""
    busybox = Dirs.from_env().cache / "roots" / "busybox"
    nfsroot.build_busybox(busybox)
    root = tmp_path / "root"
    shutil.copytree(busybox, root, symlinks=True)
    (root / "sbin" / "init").unlink()
    (root / "sbin" / "init").write_text(init)
    (root / "sbin" / "init").chmod(0o755)
    root.chmod(0o755)
    tmp_path.chmod(0o755)
    return root


def test_an_init_that_exits_is_init_failed(tmp_path: Path, lab_down: list[str]) -> None:
    _root_with_init(tmp_path, "#!/bin/sh\necho 'this init gives up'\nexit 3\n")
    path = _scenario(tmp_path, "initexits", '[root]\nsource = "dir"\npath = "root"\n'
                     '[kernel]\nsource = "debian"\n' + TERMINAL, lab_down)
    t, err = _boots_to("init-failed", path)
    assert "Attempted to kill init" in t["line"]


def test_a_kernel_that_cannot_start_its_initrd_is_kernel_panic(
    tmp_path: Path, lab_down: list[str]
) -> None:
    path = _scenario(tmp_path, "panic", TERMINAL + 'cmdline = "rdinit=/no/such/init"\n',
                     lab_down)
    t, err = _boots_to("kernel-panic", path)
    assert "Kernel panic - not syncing" in t["line"]


def test_a_guest_that_prints_nothing_is_stalled(tmp_path: Path, lab_down: list[str]) -> None:
    """This machine's /dev/kvm cannot run guests: a KVM terminal never says a word."""
    path = _scenario(tmp_path, "silent", 'hypervisor = "kvm"\nstall = 10\n' + TERMINAL,
                     lab_down)
    t, err = _boots_to("stalled", path)
    assert 10 <= t["seconds"] < 20
    assert 'set hypervisor = "qemu"' in err


def test_a_boot_slower_than_the_timeout_is_timeout(tmp_path: Path, lab_down: list[str]) -> None:
    """Through PXE a terminal takes ~14 s; with 10 s it times out while still talking."""
    path = _scenario(tmp_path, "slow", 'timeout = 10\n' + TERMINAL + 'boot = "pxe"\n', lab_down)
    t, err = _boots_to("timeout", path)
    assert 10 <= t["seconds"] < 15


def test_every_verdict_name_is_provoked_by_a_test_here() -> None:
    from vlab.watch import FAILURES, STALLED, TIMEOUT

    names = {name for name, _ in FAILURES} | {STALLED, TIMEOUT}
    text = Path(__file__).read_text()
    missing = [n for n in sorted(names) if f'"{n}"' not in text
               and n not in {"nfs-no-such-export", "tftp-file-not-found", "nfs-mount-failed"}]
    assert missing == []
