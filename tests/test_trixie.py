"""Today's Debian (13, trixie) booted for real with every builder: its own initramfs-tools
(NFSv3), its own dracut (NFSv4.1, the default) and vlab's initrd with the root's own 6.12
kernel, whose modules are .ko.xz (decompressed into vlab's initrd), mounting NFSv3, 4.0 and 4.1
side by side in one lab; and NFSv4.2 refused for that kernel before anything boots. The three
labs boot side by side (two at a time), their roots bootstrapped side by side first."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_boot import plan_for, up_side_by_side, vlab
from test_roots import _debian_root, _multi_user

pytestmark = pytest.mark.boot

ITOOLS = "scenarios/trixie-initramfs-tools.toml"
DRACUT = "scenarios/trixie-dracut.toml"


def _version(t: dict) -> str:  # type: ignore[type-arg]
    return next(o for o in t["proof"]["options"].split(",") if o.startswith("vers="))


def _vlab_lab(folder: Path, root: Path) -> tuple[Path, str]:
    """vlab's initrd with the trixie root's own kernel: NFSv3 (the lab's version), 4.0 and
    4.1 (each a terminal whose own root= and rootflags= win over the lab's words)."""
    path = folder / "trixie-vlab.toml"
    head = (f'[lab]\nname = "trixie-vlab"\nnfs_version = "3"\ntimeout = 300\n'
            f'[root]\nsource = "dir"\npath = "{root}"\n[kernel]\nsource = "root"\n')
    path.write_text(head + '[[terminal]]\nname = "v3"\nmemory = 512\n')
    plan = plan_for(str(path))
    form = f"root=nfs4:{plan.nfs_address}:{plan.export_path}:vers={{v}} rootflags=wsize=8192"
    text = head + '[[terminal]]\nname = "v3"\nmemory = 512\n'
    for v in ("4.0", "4.1"):
        text += (f'[[terminal]]\nname = "v{v.replace(".", "")}"\nmemory = 512\n'
                 f'cmdline = "{form.format(v=v)}"\n')
    path.write_text(text)
    return path, text


@pytest.fixture(scope="module")
def trixie(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The three labs booted side by side, then down; their `vlab up` results by scenario."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        root = list(pool.map(_debian_root, (ITOOLS, DRACUT)))[0]
    assert list((root / "lib/modules").glob("*/kernel/fs/nfs/nfsv4.ko.xz"))
    own, text = _vlab_lab(tmp_path_factory.mktemp("trixie"), root)
    labs = [DRACUT, ITOOLS, str(own)]  # the longest first
    try:
        results: dict[str, Any] = dict(up_side_by_side(labs))
    finally:
        downs = {lab: vlab("down", lab) for lab in labs}
    assert all(d.returncode == 0 for d in downs.values()), downs
    results["vlab-lab"] = (own, text)
    return results


def test_trixie_boots_with_its_own_initramfs_tools(trixie: dict[str, Any]) -> None:
    _seconds, proc, rep = trixie[ITOOLS]
    assert proc.returncode == 0, proc.stderr
    (t,) = rep["terminals"]
    _multi_user(t)
    assert _version(t) == "vers=3", t["proof"]
    assert "6.12" in proc.stderr  # the root's own kernel


def test_trixie_boots_with_its_own_dracut(trixie: dict[str, Any]) -> None:
    _seconds, proc, rep = trixie[DRACUT]
    assert proc.returncode == 0, proc.stderr
    (t,) = rep["terminals"]
    _multi_user(t)
    assert t["proof"]["fstype"] == "nfs4" and _version(t) == "vers=4.1", t["proof"]


def test_trixie_boots_with_vlab_initrd_and_its_compressed_modules_over_every_version(
        trixie: dict[str, Any], tmp_path: Path, lab_down) -> None:  # type: ignore[no-untyped-def]
    own, text = trixie["vlab-lab"]
    _seconds, proc, rep = trixie[str(own)]
    assert proc.returncode == 0, proc.stderr
    by = {t["name"]: t for t in rep["terminals"]}
    for name, version in (("v3", "vers=3"), ("v40", "vers=4.0"), ("v41", "vers=4.1")):
        _multi_user(by[name])
        assert _version(by[name]) == version, by[name]["proof"]
    assert re.search(r"initrd: vlab's busybox initrd for 6\.12\S+ with .*nfsv3, nfsv4",
                     proc.stderr), proc.stderr

    # NFSv4.2 with this kernel: refused, nothing boots.
    bad = tmp_path / "bad-4.2.toml"
    bad.write_text(text.replace('nfs_version = "3"', 'nfs_version = "4.2"')
                   .replace('name = "trixie-vlab"', 'name = "trixie-bad"'))
    lab_down.append(str(bad))
    refused = vlab("up", str(bad))
    assert refused.returncode == 2, refused.stderr
    assert "READ_PLUS" in refused.stderr and 'nfs_version = "4.1"' in refused.stderr
    assert "boot " not in refused.stderr
    assert vlab("down", str(bad)).returncode == 0
