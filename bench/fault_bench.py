#!/usr/bin/env python3
"""Benchmark: what a stateless terminal survives. N terminals of one root (vlab's busybox or
a Debian root), every kind of [[fault]] in turn (scenarios/faults.toml's: the NFS server
restarted after 10 s and frozen for 5 s, the DHCP server away for 75 s across the renewal of
a 120 s lease, 20% of the server's packets lost and every packet held up to 200 ms for 10 s
each), each round a fresh lab; per kind, the share of terminals that carried on and how long
after the fault ended their NFS root answered again (each terminal's heartbeat,
vlab/verbs/faults.py) and, for the DHCP server, renewed their lease.

    .venv/bin/python bench/fault_bench.py [--rounds 1] [--cases busybox,debian] [--terminals 4]

(The Debian root is bootstrapped by mmdebstrap the first time: minutes.)
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VLAB = [sys.executable, "-m", "vlab"]
CASES = {  # root: the [root] and [kernel] tables, and memory per terminal
    "busybox": ('[root]\nsource = "busybox"\n', 256),
    "debian": ('[root]\nsource = "debian"\nsuite = "bookworm"\n[kernel]\nsource = "root"\n'
               '[initrd]\nbuilder = "initramfs-tools"\n', 512),
}


def scenario(work: Path, case: str, terminals: int) -> Path:
    tables, memory = CASES[case]
    faults = (ROOT / "scenarios" / "faults.toml").read_text()
    faults = faults[faults.index("\n[[fault]]") + 1:]
    path = work / f"{case}.toml"
    path.write_text(f'[lab]\nname = "faultbench"\nsubnet = "10.213.84.0/24"\ntimeout = 600\n'
                    "dhcp_lease = 120\n"
                    f"{tables}"
                    + "".join(f'[[terminal]]\nname = "t{i}"\nmemory = {memory}\n'
                              for i in range(1, terminals + 1))
                    + faults)
    return path


def one_round(path: Path) -> list[dict[str, object]]:
    """Every terminal's outcome of every fault, from `vlab up --json`."""
    try:
        done = subprocess.run([*VLAB, "up", str(path), "--json"], cwd=ROOT,
                              capture_output=True, text=True, timeout=3600)
        if not done.stdout:
            sys.exit(f"bench: vlab up {path.name} failed:\n{done.stderr[-3000:]}")
        rep = json.loads(done.stdout)
        return [f for t in rep["terminals"] for f in t.get("faults", [])]
    finally:
        subprocess.run([*VLAB, "down", str(path)], cwd=ROOT, capture_output=True, timeout=300,
                       check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--terminals", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vlab-fault-bench-"))
    print(f"{'root':<8} {'fault':<13} {'carried on':>11} {'answered again after the fault':>32}"
          f"   ({args.terminals} terminals x {args.rounds} round(s))", flush=True)
    try:
        for case in args.cases.split(","):
            if case not in CASES:
                sys.exit(f"bench: no case {case!r}; cases: {', '.join(CASES)}")
            path = scenario(work, case, args.terminals)
            outcomes = [f for _ in range(args.rounds) for f in one_round(path)]
            for kind in dict.fromkeys(str(f["kind"]) for f in outcomes):
                these = [f for f in outcomes if f["kind"] == kind]
                ok = [f for f in these if f["verdict"] == "ok"]
                after = [float(f["resumed_after"]) for f in ok  # type: ignore[arg-type]
                         if f.get("resumed_after") is not None]
                shown = (f"median {statistics.median(after):.1f} s, max {max(after):.1f} s"
                         if after else "-")
                renewed = [float(f["renewed_after"]) for f in ok  # type: ignore[arg-type]
                           if f.get("renewed_after") is not None]
                if renewed:
                    shown += (f"; lease renewed after median {statistics.median(renewed):.0f}"
                              f" s, max {max(renewed):.0f} s")
                failed = collections.Counter(str(f["verdict"]) for f in these if f not in ok)
                if failed:
                    shown += " (" + ", ".join(f"{n} {v}" for v, n in failed.items()) + ")"
                print(f"{case:<8} {kind:<13} {len(ok):>4}/{len(these):<6} {shown:>32}",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
