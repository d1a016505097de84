"""Today's Debian (13, trixie) booted for real with every builder: its own initramfs-tools
(NFSv3), its own dracut (NFSv4.1, the default) and vlab's initrd with the root's own 6.12
kernel, whose modules are .ko.xz (decompressed into vlab's initrd), mounting NFSv3, 4.0 and 4.1
side by side in one lab; and NFSv4.2 refused for that kernel before anything boots."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_boot import plan_for, up, vlab
from test_roots import _multi_user

from vlab import nfsroot

pytestmark = pytest.mark.boot

ITOOLS = "scenarios/trixie-initramfs-tools.toml"
DRACUT = "scenarios/trixie-dracut.toml"


def _version(t: dict) -> str:  # type: ignore[type-arg]
    return next(o for o in t["proof"]["options"].split(",") if o.startswith("vers="))


def test_trixie_boots_with_its_own_initramfs_tools(lab_down) -> None:  # type: ignore[no-untyped-def]
    lab_down.append(ITOOLS)
    proc, rep = up(ITOOLS)
    assert proc.returncode == 0, proc.stderr
    (t,) = rep["terminals"]
    _multi_user(t)
    assert _version(t) == "vers=3", t["proof"]
    assert "6.12" in proc.stderr  # the root's own kernel
    assert vlab("down", ITOOLS).returncode == 0


def test_trixie_boots_with_its_own_dracut(lab_down) -> None:  # type: ignore[no-untyped-def]
    lab_down.append(DRACUT)
    proc, rep = up(DRACUT)
    assert proc.returncode == 0, proc.stderr
    (t,) = rep["terminals"]
    _multi_user(t)
    assert t["proof"]["fstype"] == "nfs4" and _version(t) == "vers=4.1", t["proof"]
    assert vlab("down", DRACUT).returncode == 0


def test_trixie_boots_with_vlab_initrd_and_its_compressed_modules_over_every_version(
        tmp_path: Path, lab_down) -> None:  # type: ignore[no-untyped-def]
    root = plan_for(ITOOLS)
    nfsroot.build_debian(root.export_path, root.debian_suite, root.debian_packages,
                         lambda _text: None)
    assert list((root.export_path / "lib/modules").glob("*/kernel/fs/nfs/nfsv4.ko.xz"))
    path = tmp_path / "trixie-vlab.toml"
    head = (f'[lab]\nname = "trixie-vlab"\nnfs_version = "3"\ntimeout = 300\n'
            f'[root]\nsource = "dir"\npath = "{root.export_path}"\n[kernel]\nsource = "root"\n')
    path.write_text(head + '[[terminal]]\nname = "v3"\nmemory = 512\n')
    plan = plan_for(str(path))
    # The last root= and rootflags= win over the lab's own (NFSv3) words.
    form = (f"root=nfs4:{plan.gateway}:{plan.export_path}:vers={{v}},port={plan.nfs_port} "
            f"rootflags=port={plan.nfs_port}")
    text = head + '[[terminal]]\nname = "v3"\nmemory = 512\n'
    for v in ("4.0", "4.1"):
        text += (f'[[terminal]]\nname = "v{v.replace(".", "")}"\nmemory = 512\n'
                 f'cmdline = "{form.format(v=v)}"\n')
    path.write_text(text)
    lab_down.append(str(path))
    proc, rep = up(str(path))
    assert vlab("down", str(path)).returncode == 0
    assert proc.returncode == 0, proc.stderr
    by = {t["name"]: t for t in rep["terminals"]}
    for name, version in (("v3", "vers=3"), ("v40", "vers=4.0"), ("v41", "vers=4.1")):
        _multi_user(by[name])
        assert _version(by[name]) == version, by[name]["proof"]
    assert re.search(r"initrd: vlab's busybox initrd for 6\.12\S+ with .*nfsv3, nfsv4",
                     proc.stderr), proc.stderr

    # NFSv4.2 with this kernel: refused, nothing boots.
    for version in ("4.2",):
        bad = tmp_path / f"bad-{version}.toml"
        bad.write_text(text.replace('nfs_version = "3"', f'nfs_version = "{version}"')
                       .replace('name = "trixie-vlab"', 'name = "trixie-bad"'))
        lab_down.append(str(bad))
        refused = vlab("up", str(bad))
        assert refused.returncode == 2, refused.stderr
        assert "READ_PLUS" in refused.stderr and 'nfs_version = "4.1"' in refused.stderr
        assert "boot " not in refused.stderr
        assert vlab("down", str(bad)).returncode == 0
