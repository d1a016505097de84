"""Images as image builders make them, booted for real: a GPT disk with an ESP, a /boot
partition (XBOOTLDR) and a root partition (the Discoverable Partitions Specification's x86-64
root type), the same disk as qcow2, and an MBR disk. Each boots with vlab's initrd and with the
root's own initramfs-tools (its kernel read from the /boot partition), two labs at a time; no
run writes a byte to any of them (checksums before and after)."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from disks import ESP, ROOT_X86_64, XBOOTLDR, Part, disk, qcow2, sha256, size_mib
from test_boot import plan_for, up, vlab
from test_roots import _debian_root, _multi_user

pytestmark = pytest.mark.boot



def _root_partition(root: Path, out: Path) -> Path:
    """The root's tree as an ext4 filesystem whose /boot is an empty mount point."""
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(out),
                    f"{size_mib(root)}M"], check=True)
    for entry in (root / "boot").iterdir():
        subprocess.run(["debugfs", "-w", "-R", f"rm /boot/{entry.name}", str(out)],
                       check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """gpt (raw), qcow2 (the gpt disk converted), mbr (raw, /boot inside the root)."""
    root = _debian_root()
    folder = tmp_path_factory.mktemp("images")
    size = size_mib(root)
    root_fs = _root_partition(root, folder / "root.ext4")
    gpt = disk(folder / "gpt.img", "gpt", [
        Part(ESP, 16, "vfat", fslabel="EFI"),
        Part(XBOOTLDR, 128, "ext4", root / "boot", label="boot"),
        Part(ROOT_X86_64, size, None, label="root"),
    ])
    offset = 1 + 16 + 128  # MiB: where sfdisk put the root partition
    subprocess.run(["dd", f"if={root_fs}", f"of={gpt}", "bs=1M", f"seek={offset}",
                    "conv=notrunc,sparse", "status=none"], check=True)
    root_fs.unlink()
    mbr = disk(folder / "mbr.img", "dos", [Part("83", size, "ext4", root)])
    return {"gpt": gpt, "qcow2": qcow2(gpt, folder / "gpt.qcow2"), "mbr": mbr}


def _scenario(folder: Path, name: str, image: Path, builder: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'[lab]\nname = "{name}"\ntimeout = 420\nstall = 90\n'
                    f'[root]\nsource = "image"\npath = "{image}"\n'
                    f'[kernel]\nsource = "root"\n[initrd]\nbuilder = "{builder}"\n'
                    '[[terminal]]\nname = "t1"\nmemory = 512\n')
    return path


def test_partitioned_and_qcow2_images_boot_with_every_builder_and_stay_unchanged(
        images: dict[str, Path], tmp_path: Path, lab_down) -> None:  # type: ignore[no-untyped-def]
    before = {name: sha256(path) for name, path in images.items()}
    labs = {f"img-{name}-{b[:5]}": (name, _scenario(tmp_path, f"img-{name}-{b[:5]}", path, b))
            for name, path in images.items() for b in ("vlab", "initramfs-tools")}
    lab_down.extend(str(s) for _n, s in labs.values())

    def boot(lab: str) -> tuple[float, Any, Any, dict[str, list[str]], list[str]]:
        """Up (timed), what is mounted for the lab while it runs, down, what is left."""
        start = time.monotonic()
        proc, rep = up(str(labs[lab][1]))
        seconds = time.monotonic() - start
        export = str(plan_for(str(labs[lab][1])).export_path)
        mounted = {m.split()[1]: m.split() for m in Path("/proc/mounts").read_text().splitlines()
                   if m.split()[1].startswith(export)}
        down = vlab("down", str(labs[lab][1]))
        assert down.returncode == 0, down.stderr
        left = [m for m in Path("/proc/mounts").read_text().splitlines() if export in m]
        return seconds, proc, rep, mounted, left

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(labs, pool.map(boot, labs), strict=True))
    for lab, (seconds, proc, rep, points, left) in results.items():
        name, scenario = labs[lab]
        assert proc.returncode == 0, f"{lab}:\n{proc.stderr}\n{rep}"
        (t,) = rep["terminals"]
        _multi_user(t)
        export = plan_for(str(scenario)).export_path
        assert t["proof"]["export"] == str(export)
        print(f"{lab}: vlab up {seconds:.0f} s, boot {t['seconds']:.0f} s")
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(points[str(export)][3].split(","))
        if name in ("gpt", "qcow2"):  # its XBOOTLDR partition, on the root's /boot
            assert "ro" in points[str(export / "boot")][3].split(","), points
        else:
            assert set(points) == {str(export)}, points
        if name == "qcow2":
            assert "(as /" in proc.stderr, proc.stderr  # the cached raw conversion
        assert left == [], (lab, left)
    assert {name: sha256(path) for name, path in images.items()} == before
