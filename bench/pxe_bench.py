#!/usr/bin/env python3
"""Benchmark of `vlab pxe` for many hosts: config generation cold (empty TFTP root) and after
one host changed, with the kernel and initrd already built and cached. Prints the in-process
time of scenario -> plan -> files -> tree, and the whole `vlab pxe` command's wall time.

Seconds differ between machines (and from minute to minute on one: a small-file disk is
what it measures), so it also times `tar -x` laying down the very files of the cold tree on
the same disk, in the same run, and prints the ratios. Targets: cold <= 1.5x tar; one host
changed <= 0.2 s or <= 0.05x cold, whichever is larger. --firmware uefi: the hosts boot UEFI
(shim, GRUB and its per-MAC files included).

    .venv/bin/python bench/pxe_bench.py --hosts 10000 [--firmware uefi] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vlab import scenario  # noqa: E402
from vlab.artifacts import pxe_config  # noqa: E402
from vlab.build import efi  # noqa: E402
from vlab.plan import site as site_plan  # noqa: E402
from vlab.plan.lab import Dirs  # noqa: E402
from vlab.plan.make import make_plan  # noqa: E402
from vlab.serve import tftp  # noqa: E402
from vlab.verbs import pxe as lab_pxe  # noqa: E402


def write_scenario(path: Path, hosts: int, changed: bool, firmware: str = "bios") -> None:
    lines = [f'[lab]\nname = "pxebench"\n[pxe]\nfirmware = "{firmware}"\n']
    for i in range(hosts):
        cmdline = "loglevel=7" if changed and i == hosts // 2 else ""
        lines.append(f'[[machine]]\nname = "h{i}"\nmac = "02:00:00:{i >> 16 & 255:02x}:'
                     f'{i >> 8 & 255:02x}:{i & 255:02x}"\nip = "10.{100 + (i >> 16)}.'
                     f'{i >> 8 & 255}.{i & 255}"\n' + (f'cmdline = "{cmdline}"\n' if cmdline
                                                      else ""))
    path.write_text("".join(lines))


def generate(path: Path, tftp_dir: Path, copies: dict[str, Path]) -> tuple[float, int]:
    start = time.perf_counter()
    s = scenario.load(path)
    plan = make_plan(s, Dirs.from_env())
    site = plan.site
    assert site is not None
    changes = tftp.write_tree(tftp_dir, pxe_config.shared_files(site), copies,
                              pxe_config.machine_groups(site))
    return time.perf_counter() - start, len(changes.written)


def tar_time(archive: Path, into: Path) -> float:
    """Seconds `tar -x` takes to lay down the archive's files in a fresh folder."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir()
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(into)], check=True)
    took = time.perf_counter() - start
    shutil.rmtree(into)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10000)
    parser.add_argument("--firmware", choices=("bios", "uefi", "uefi-secure"), default="bios")
    parser.add_argument("--rounds", type=int, default=3, help="cold runs (and tar runs) to "
                        "take the fastest of, interleaved")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vlab-pxe-bench-"))
    try:
        scen, tftp_dir = work / "site.toml", work / "tftp"
        write_scenario(scen, args.hosts, False, args.firmware)
        # Warm the artifact cache once (kernel, initrd), as the target assumes.
        s = scenario.load(scen)
        plan = make_plan(s, Dirs.from_env())
        lab_pxe.pxe(plan, Dirs.from_env(), tftp_dir, lambda _t: None)
        for name in (site_plan.KERNEL, site_plan.INITRD):
            shutil.copyfile(tftp_dir / name, work / name)
        copies = {**tftp.bootloaders(), site_plan.KERNEL: work / site_plan.KERNEL,
                  site_plan.INITRD: work / site_plan.INITRD}
        if args.firmware != "bios":
            copies.update(efi.loaders().files)
        archive = work / "tree.tar"  # the very files of a cold tree, for tar to lay down
        subprocess.run(["tar", "-cf", str(archive), "-C", str(tftp_dir), "."], check=True)
        colds, tars = [], []
        for _ in range(args.rounds):
            shutil.rmtree(tftp_dir)
            subprocess.run(["sync"], check=True)
            cold, n_cold = generate(scen, tftp_dir, copies)
            colds.append(cold)
            tars.append(tar_time(archive, work / "by-tar"))
        cold, tar = min(colds), min(tars)
        write_scenario(scen, args.hosts, True, args.firmware)
        one, n_one = generate(scen, tftp_dir, copies)
        same, n_same = generate(scen, tftp_dir, copies)
        target_one = max(0.2, 0.05 * cold)
        print(f"{args.hosts} hosts ({args.firmware}), in process (scenario -> plan -> files "
              f"-> tree), fastest of {args.rounds}:")
        print(f"  tar -x of the same files: {tar:6.2f} s")
        print(f"  cold:                     {cold:6.2f} s  {cold / tar:5.2f}x tar  "
              f"({n_cold} files written)   target <= 1.5x")
        print(f"  one host changed:         {one:6.2f} s  {one / cold:5.3f}x cold "
              f"({n_one} files written)   target <= {target_one:.2f} s")
        print(f"  nothing changed:          {same:6.2f} s  ({n_same} files written)")
        write_scenario(scen, args.hosts, False, args.firmware)
        shutil.rmtree(tftp_dir)
        for label in ("cold", "one host changed"):
            if label != "cold":
                write_scenario(scen, args.hosts, True, args.firmware)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vlab", "pxe", str(scen), "--tftp-dir",
                            str(tftp_dir)], cwd=ROOT, check=True, capture_output=True)
            print(f"  whole `vlab pxe` command, {label}: {time.perf_counter() - start:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
