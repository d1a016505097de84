#!/usr/bin/env python3
"""Benchmark: boot times per architecture and address family, against an x86 IPv4 boot in
the same run, and each direct-boot case against a bare QEMU of the very same files.

Each case is a one-terminal lab, brought up with `vlab up --json` and down again each round:
the terminal's seconds from its domain's start to the initrd's first line (the report's
`initrd` phase) and to its verdict (the NFS root mounted, over IPv4 or IPv6). For the cases
that start their kernel directly, the bare side is `qemu-system-x86_64` (or
`qemu-system-aarch64 -M virt -cpu cortex-a57`, as vlab's arm64 terminals) with the kernel,
initrd and command line the lab used, no network, to the same initrd line. The PXE cases boot
UEFI firmware (OVMF; AAVMF for arm64) through shim and GRUB from the lab's own TFTP tree, over
IPv4 or IPv6; bench/twin_bench.py has their bare side for x86 over IPv4.

    .venv/bin/python bench/family_bench.py [--rounds 3] [--cases amd64-ipv4,arm64-ipv4]
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cases import chosen  # noqa: E402
from initrd_line import seconds_to_initrd  # noqa: E402

from vlab import scenario as scenarios  # noqa: E402
from vlab.plan.lab import Dirs  # noqa: E402
from vlab.plan.make import make_plan  # noqa: E402

VLAB = [sys.executable, "-m", "vlab"]
CASES = {  # name: (arch, addresses, boot)
    "amd64-ipv4": ("amd64", "ipv4", "kernel"),
    "amd64-ipv6": ("amd64", "ipv6", "kernel"),
    "amd64-dual": ("amd64", "dual", "kernel"),
    "arm64-ipv4": ("arm64", "ipv4", "kernel"),
    "arm64-ipv6": ("arm64", "ipv6", "kernel"),
    "amd64-uefi-pxe-ipv4": ("amd64", "ipv4", "pxe"),
    "amd64-uefi-pxe-ipv6": ("amd64", "ipv6", "pxe"),
    "arm64-uefi-pxe-ipv4": ("arm64", "ipv4", "pxe"),
}


def scenario(work: Path, case: str) -> Path:
    arch, addresses, boot = CASES[case]
    path = work / f"{case}.toml"
    terminal = f'[[terminal]]\nname = "t1"\narch = "{arch}"\n'
    if boot == "pxe":
        terminal += 'boot = "pxe"\nfirmware = "uefi"\nmemory = 512\n'
    path.write_text(f'[lab]\nname = "familybench"\nsubnet = "10.213.83.0/24"\n'
                    f'addresses = "{addresses}"\n{terminal}')
    return path


def boot(path: Path, keep: Path | None) -> tuple[float, float]:
    """vlab's terminal: seconds to the initrd's first line and to its verdict; its kernel,
    initrd and command line copied into `keep` for the bare side."""
    try:
        done = subprocess.run([*VLAB, "up", str(path), "--json"], cwd=ROOT,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            sys.exit(f"bench: vlab up {path.name} failed:\n{done.stderr[-3000:]}")
        (t,) = json.loads(done.stdout)["terminals"]
        if keep is not None:
            plan = make_plan(scenarios.load(path), Dirs.from_env())
            shutil.copyfile(plan.kernel_path, keep / "kernel")
            shutil.copyfile(plan.initrd_path, keep / "initrd")
            (keep / "cmdline").write_text(plan.terminals[0].cmdline)
        return dict(t["phases"])["initrd"], t["seconds"]
    finally:
        subprocess.run([*VLAB, "down", str(path)], cwd=ROOT, capture_output=True, timeout=300,
                       check=False)


def bare(case: str, files: Path) -> float:
    """A bare QEMU of the same kernel, initrd and command line: seconds to the initrd's
    first line."""
    arch = CASES[case][0]
    common = ["-m", "256", "-nographic", "-no-reboot", "-nic", "none",
              "-kernel", str(files / "kernel"), "-initrd", str(files / "initrd"),
              "-append", (files / "cmdline").read_text()]
    argv = (["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", *common]
            if arch == "arm64" else ["qemu-system-x86_64", "-accel", "tcg", "-M", "pc", *common])
    start = time.monotonic()
    qemu = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.PIPE)
    try:
        return seconds_to_initrd(qemu, start, case)
    finally:
        qemu.kill()
        qemu.wait()


def main() -> int:
    rounds, cases = chosen(__doc__, CASES)
    work = Path(tempfile.mkdtemp(prefix="vlab-family-bench-"))
    print(f"{'case':<20} {'to initrd':>10} {'bare':>8} {'ratio':>6} {'to verdict':>11} "
          f"{'vs x86 IPv4':>12}   (medians of {rounds})", flush=True)
    reference: dict[str, float] = {}
    try:
        for case in cases:
            path = scenario(work, case)
            files = work / case
            files.mkdir()
            direct = CASES[case][2] == "kernel"
            vlab = [boot(path, files if direct and i == 0 else None) for i in range(rounds)]
            to_initrd = statistics.median(t for t, _v in vlab)
            to_verdict = statistics.median(v for _t, v in vlab)
            reference.setdefault(CASES[case][2], to_verdict)  # the first case of its boot kind
            base = reference[CASES[case][2]]
            if direct:
                bare_initrd = statistics.median(bare(case, files) for _ in range(rounds))
                shown = f"{bare_initrd:>6.1f} s {to_initrd / bare_initrd:>5.2f}x"
            else:
                shown = f"{'':>8} {'':>6}"
            print(f"{case:<20} {to_initrd:>8.1f} s {shown} {to_verdict:>9.1f} s "
                  f"{to_verdict / base:>11.2f}x", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
