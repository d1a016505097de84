#!/usr/bin/env python3
"""Benchmark: `vlab up` (to the verdict) of the same root as a bare ext4 image, as a GPT disk
(ESP, root partition) and as that disk in qcow2; cold (the image never seen: a qcow2 image is
read for its checksum and converted) and warm (the same image again). The root is vlab's
busybox terminal (its boot is seconds, so the image's own cost shows), or with --root debian
the Debian root of scenarios/debian-initramfs-tools.toml (~0.5 GiB: what a conversion and a
checksum cost on a real image), booted with vlab's initrd and the root's own kernel.

Run as root: .venv/bin/python bench/image_bench.py [--rounds 3] [--root debian]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from disks import ESP, ROOT_X86_64, Part, disk, qcow2, size_mib  # noqa: E402

from vlab import scenario  # noqa: E402
from vlab.build import nfsroot  # noqa: E402
from vlab.plan.lab import Dirs  # noqa: E402
from vlab.verbs.claim import plan_for  # noqa: E402

VLAB = [sys.executable, "-m", "vlab"]


def _up(path: Path) -> float:
    start = time.monotonic()
    subprocess.run([*VLAB, "up", str(path)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - start
    subprocess.run([*VLAB, "down", str(path)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", choices=("busybox", "debian"), default="busybox")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("image_bench: run as root")
    dirs = Dirs.from_env()
    if args.root == "debian":
        plan = plan_for(scenario.load(ROOT / "scenarios/debian-initramfs-tools.toml"), dirs)
        tree = nfsroot.build_debian(plan.export_path, plan.debian_suite, plan.debian_packages,
                                    print)
        size = size_mib(tree)
        kernel = '[kernel]\nsource = "root"\n'
        terminal = 'memory = 512\n'
    else:
        tree = nfsroot.build_busybox(dirs.cache / "roots" / "busybox")
        size, kernel, terminal = 64, '[kernel]\nsource = "debian"\n', ""
    results: dict[str, tuple[list[float], list[float]]] = {}
    converted = dirs.cache / "images"
    before = set(converted.glob("*")) if converted.is_dir() else set()
    with tempfile.TemporaryDirectory(prefix="vlab-image-bench-") as tmp:
        folder = Path(tmp)
        for _round in range(args.rounds):
            # A new image each round (another checksum): cold is really cold.
            bare = folder / "bare.img"
            bare.unlink(missing_ok=True)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(bare),
                            f"{size}M"], check=True)
            (folder / "stamp").write_text(str(time.time()))
            subprocess.run(["debugfs", "-w", "-R", f"write {folder / 'stamp'} /stamp",
                            str(bare)], check=True, capture_output=True)
            gpt = disk(folder / "gpt.img", "gpt", [Part(ESP, 8, "vfat"),
                                                   Part(ROOT_X86_64, size, None)])
            subprocess.run(["dd", f"if={bare}", f"of={gpt}", "bs=1M", "seek=9",
                            "conv=notrunc,sparse", "status=none"], check=True)
            q = qcow2(gpt, folder / "gpt.qcow2")
            for name, image in (("bare ext4", bare), ("GPT raw", gpt), ("GPT qcow2", q)):
                path = folder / f"{name.replace(' ', '-')}.toml"
                path.write_text(f'[lab]\nname = "imgbench"\ntimeout = 300\n[root]\n'
                                f'source = "image"\npath = "{image}"\n{kernel}'
                                f'[[terminal]]\nname = "t1"\n{terminal}')
                cold = _up(path)
                warm = _up(path)
                colds, warms = results.setdefault(name, ([], []))
                colds.append(cold)
                warms.append(warm)
                print(f"{name:<10} cold {cold:5.2f} s  warm {warm:5.2f} s", flush=True)
        for made in set(converted.glob("*")) - before:
            made.unlink()  # the bench's own conversions only
    print(f"median of {args.rounds} rounds (`vlab up` to the verdict, {args.root} root):")
    for name, (colds, warms) in results.items():
        print(f"  {name:<10} cold {statistics.median(colds):5.2f} s   "
              f"warm {statistics.median(warms):5.2f} s")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
