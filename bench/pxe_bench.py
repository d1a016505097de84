#!/usr/bin/env python3
"""Benchmark of `vlab pxe` for many hosts: config generation cold (empty TFTP root) and after
one host changed, with the kernel and initrd already built and cached. Prints the in-process
time of scenario -> plan -> files -> tree, and the whole `vlab pxe` command's wall time.

    .venv/bin/python bench/pxe_bench.py --hosts 10000
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

from vlab import pxe, scenario, tftp  # noqa: E402
from vlab.lab import pxe as lab_pxe  # noqa: E402
from vlab.plan import Dirs, make_plan  # noqa: E402


def write_scenario(path: Path, hosts: int, changed: bool) -> None:
    lines = ['[lab]\nname = "pxebench"\n']
    for i in range(hosts):
        cmdline = "loglevel=7" if changed and i == hosts // 2 else ""
        lines.append(f'[[host]]\nname = "h{i}"\nmac = "02:00:00:{i >> 16 & 255:02x}:'
                     f'{i >> 8 & 255:02x}:{i & 255:02x}"\nip = "10.{100 + (i >> 16)}.'
                     f'{i >> 8 & 255}.{i & 255}"\n' + (f'cmdline = "{cmdline}"\n' if cmdline
                                                      else ""))
    path.write_text("".join(lines))


def generate(path: Path, tftp_root: Path, copies: dict[str, Path]) -> tuple[float, int]:
    start = time.perf_counter()
    s = scenario.load(path)
    plan = make_plan(s, Dirs.from_env())
    site = pxe.site_plan(s, plan)
    changes = tftp.write_tree(tftp_root, pxe.shared_files(site), copies, pxe.machine_groups(site))
    return time.perf_counter() - start, len(changes.written)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vlab-pxe-bench-"))
    try:
        scen, tftp_root = work / "site.toml", work / "tftp"
        write_scenario(scen, args.hosts, changed=False)
        # Warm the artifact cache once (kernel, initrd), as the target assumes.
        s = scenario.load(scen)
        plan = make_plan(s, Dirs.from_env())
        lab_pxe.write(s, plan, Dirs.from_env(), tftp_root, lambda _t: None)
        for name in (pxe.KERNEL, pxe.INITRD):
            shutil.copyfile(tftp_root / name, work / name)
        copies = {**tftp.bootloaders(), pxe.KERNEL: work / pxe.KERNEL,
                  pxe.INITRD: work / pxe.INITRD}
        shutil.rmtree(tftp_root)
        cold, n_cold = generate(scen, tftp_root, copies)
        write_scenario(scen, args.hosts, changed=True)
        one, n_one = generate(scen, tftp_root, copies)
        print(f"{args.hosts} hosts, in process (scenario -> plan -> files -> tree):")
        print(f"  cold:            {cold:6.2f} s  ({n_cold} files written)   target <= 2 s")
        print(f"  one host changed:{one:6.2f} s  ({n_one} files written)   target <= 0.2 s")
        write_scenario(scen, args.hosts, changed=False)
        shutil.rmtree(tftp_root)
        for label in ("cold", "one host changed"):
            if label != "cold":
                write_scenario(scen, args.hosts, changed=True)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vlab", "pxe", str(scen), "--tftp-root",
                            str(tftp_root)], cwd=ROOT, check=True, capture_output=True)
            print(f"  whole `vlab pxe` command, {label}: {time.perf_counter() - start:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
