"""arm64: terminals and PXE twins under qemu-system-aarch64 (TCG), over an arm64 busybox root
with Debian's arm64 kernel and vlab's initrd for it, and what an arm64 scenario cannot have."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT
from test_boot import vlab
from test_pxe import twins_of_an_unsigned_kernel

from vlab import scenario
from vlab.build import busybox
from vlab.errors import ScenarioError
from vlab.plan.lab import Dirs
from vlab.scenario.model import Arch


def _refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as err:
        scenario.load(path)
    return str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ('[lab]\nname = "a"\n[[terminal]]\nname = "t1"\narch = "arm64"\n[[terminal]]\nname = "t2"\n',
     'terminal[1].arch: "amd64", but terminal[0] is "arm64"'),
    ('[lab]\nname = "a"\n[root]\nsource = "debian"\n[[terminal]]\nname = "t1"\narch = "arm64"\n',
     'root.source: "debian" for arm64 terminals'),
    ('[lab]\nname = "a"\n[[terminal]]\nname = "t1"\narch = "arm64"\nboot = "pxe"\n'
     'firmware = "bios"\nmemory = 512\n', 'terminal[0].firmware: "bios" for an arm64 terminal'),
    ('[lab]\nname = "a"\nhypervisor = "xen"\n[initrd]\nnic_drivers = ["xen-netfront"]\n'
     '[[terminal]]\nname = "t1"\narch = "arm64"\n', 'terminal[0].arch: "arm64" in a Xen lab'),
    ('[lab]\nname = "a"\n[[machine]]\nname = "m1"\nmac = "52:54:00:00:00:01"\narch = "arm64"\n'
     'netboot = "ipxe"\n', 'machine[0].netboot: "ipxe" for an arm64 machine'),
    ('[lab]\nname = "a"\n[[machine]]\nname = "m1"\nmac = "52:54:00:00:00:01"\narch = "arm64"\n'
     'firmware = "bios"\n', 'machine[0].firmware: "bios" for an arm64 machine'),
    ('[lab]\nname = "a"\n[[terminal]]\nname = "t1"\narch = "arm64"\n'
     '[[probe]]\nname = "p"\nrun = "true"\n', "probe: runs over SSH"),
    ('[lab]\nname = "a"\n[[terminal]]\nname = "t1"\narch = "x86"\n',
     'terminal[0].arch: \'x86\' is not supported; fix: use one of "amd64", "arm64"'),
])
def test_what_an_arm64_scenario_cannot_have_is_refused_by_name(tmp_path: Path, text: str,
                                                               message: str) -> None:
    assert message in _refused(tmp_path, text)


def test_an_arm64_scenario_takes_the_arm64_kernel_and_uefi_by_default() -> None:
    s = scenario.load(ROOT / "scenarios" / "arm64.toml")
    assert s.arch is Arch.ARM64 and s.kernel.package == "linux-image-arm64"
    assert [t.firmware.value for t in s.terminals] == ["bios", "uefi", "uefi-secure"]
    site = scenario.load(ROOT / "scenarios" / "site-arm64.toml")
    assert [m.firmware.value for m in site.pxe.machines] == ["uefi", "uefi-secure"]


def test_the_arm64_busybox_is_debians_static_arm64_build() -> None:
    """Fetched by apt into the cache (never run here): a static aarch64 ELF; the machine's own
    is refused as one, and it as the machine's."""
    bb = busybox.binary(Arch.ARM64, Dirs.from_env().cache)
    assert busybox._is_static(bb, Arch.ARM64) and not busybox._is_static(bb, Arch.AMD64)
    assert not busybox._is_static(busybox.binary(), Arch.ARM64)


@pytest.mark.boot
def test_arm64_terminals_boot_directly_and_through_aavmf_shim_and_grub(lab_down) -> None:  # type: ignore[no-untyped-def]
    """scenarios/arm64.toml: t1 starts Debian's arm64 kernel directly (no firmware), t2 and
    t3 PXE-boot under AAVMF (t3 with Secure Boot) through shimaa64, the signed network GRUB
    and their grub.cfg-01-<mac> in the lab's tree; all three mount the arm64 root."""
    path = "scenarios/arm64.toml"
    lab_down.append(path)
    proc = vlab("up", path, "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr
    terminals = {t["name"]: t for t in json.loads(proc.stdout)["terminals"]}
    for name, t in terminals.items():
        assert t["verdict"] == "ok", t
        assert t["proof"]["export"].endswith("/roots/busybox-arm64"), t
        log = Path(t["console_log"]).read_text(errors="replace")
        assert "on aarch64" in log and "console=ttyAMA0" in log, log[-3000:]
        if name != "t1":
            assert "NBP filename is shimaa64.efi" in log and f"vlab.pxe={name}" in log, log[-3000:]
    lab = Dirs.from_env().state / "labs/arm64"
    assert (lab / "tftp/shimaa64.efi").is_file() and not (lab / "tftp/pxelinux.0").exists()
    assert vlab("down", path, timeout=120).returncode == 0
    assert not (lab / "nvram").exists()


@pytest.mark.boot
def test_arm64_twins_boot_through_the_written_tree_and_secure_boot_is_enforced(lab_down) -> None:  # type: ignore[no-untyped-def]
    """vlab pxe --twins of an arm64 site: each machine's twin and one per firmware without a
    file of its own boot under AAVMF to `ok`; with an unsigned kernel in the tree the Secure
    Boot twins are refused by name (so AAVMF enforced it), the others boot it."""
    path = "scenarios/site-arm64.toml"
    lab_down.append(path)
    tftp_dir = Path("/var/lib/vlab/test-tftp/site-arm64")
    shutil.rmtree(tftp_dir, ignore_errors=True)
    proc = vlab("pxe", path, "--tftp-dir", str(tftp_dir), "--twins", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr
    twins = {t["name"]: t for t in json.loads(proc.stdout)["twins"]["terminals"]}
    assert set(twins) == {"pxe-arm1", "pxe-armsb1", "pxe-default-uefi",
                          "pxe-default-uefi-secure"}
    for name, t in twins.items():
        assert t["verdict"] == "ok", t
        log = Path(t["console_log"]).read_text(errors="replace")
        host = name.removeprefix("pxe-")
        assert "on aarch64" in log and "NBP filename is shimaa64.efi" in log, log[-3000:]
        assert f"vlab.pxe={'default' if host.startswith('default') else host}" in log
    assert {p.name for p in tftp_dir.iterdir()} >= {"shimaa64.efi", "grubaa64.efi", "vmlinuz"}
    assert not (tftp_dir / "pxelinux.0").exists() and not (tftp_dir / "pxelinux.cfg").exists()

    twins_of_an_unsigned_kernel(path, tftp_dir, ("pxe-armsb1", "pxe-default-uefi-secure"),
                                ("pxe-arm1", "pxe-default-uefi"))
