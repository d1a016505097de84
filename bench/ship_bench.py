#!/usr/bin/env python3
"""Benchmark: shipping a lab's kernel and initrd to another hypervisor host over SFTP, cold
(nothing there) and warm (both there already: checksums compared, nothing moved), against
`scp` of the same files to the same host in the same run.

The other host is the tests' second libvirt host (tests/simhost.py: its own namespaces and
sshd, reached through the lab host's namespace). Run as root:
    .venv/bin/python bench/ship_bench.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import simhost  # noqa: E402

from vlab import scenario  # noqa: E402
from vlab.nodes.reach import session as node_session  # noqa: E402
from vlab.plan.lab import Dirs  # noqa: E402
from vlab.verbs.claim import plan_for  # noqa: E402
from vlab.verbs.up import boot_files_for, build_boot_files  # noqa: E402

SCENARIO = ROOT / "tests/scenarios/two-hosts.toml"
SIM_DIR = Path("/var/tmp/vlab-test-h2")
VLAB = [sys.executable, "-m", "vlab"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    had_lab_host = Path("/run/netns/vlab-host").exists()
    subprocess.run([*VLAB, "lab-host", "up"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    sim = simhost.start(SIM_DIR)
    dirs = Dirs.from_env()
    plan = plan_for(scenario.load(SCENARIO), dirs)
    h2 = plan.node("h2")
    try:
        k, _img = build_boot_files(plan, dirs, lambda _text: None)
        files = boot_files_for(plan, k, h2)
        size = sum(p.stat().st_size for p in files) / 2**20
        cold, warm, scp = [], [], []
        for _ in range(args.rounds):
            with node_session(h2) as session:
                session.remove_tree(str(h2.files_dir))
            t0 = time.monotonic()
            with node_session(h2) as session:
                done = session.ship(files)
            cold.append(time.monotonic() - t0)
            assert len(done.moved) == 2, done
            t0 = time.monotonic()
            with node_session(h2) as session:
                done = session.ship(files)
            warm.append(time.monotonic() - t0)
            assert not done.moved and done.bytes == 0, f"warm moved {done.moved}"
            t0 = time.monotonic()
            subprocess.run(["ip", "netns", "exec", h2.netns or "", "scp", "-q", "-i",
                            str(sim.key), *map(str, files), f"root@{simhost.ADDR}:/tmp/"],
                           check=True)
            scp.append(time.monotonic() - t0)
        with node_session(h2) as session:
            session.remove_tree(str(h2.files_dir))
    finally:
        simhost.stop(SIM_DIR)
        if not had_lab_host:
            subprocess.run([*VLAB, "lab-host", "down"], cwd=ROOT, stdout=subprocess.DEVNULL)
    c, w, s = (statistics.median(x) for x in (cold, warm, scp))
    print(f"kernel + initrd: {size:.1f} MiB, {args.rounds} rounds (medians)")
    print(f"cold ship (SFTP, SHA-256 checked): {c:.2f} s   scp of the same files: {s:.2f} s   "
          f"ratio {c / s:.2f}x")
    print(f"warm ship (checksums only, 0 bytes moved): {w:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
