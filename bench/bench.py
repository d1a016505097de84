#!/usr/bin/env python3
"""Benchmark: `vlab up` of one terminal with warm artifacts, against a bare
qemu-system-x86_64 -kernel/-initrd boot of the same artifacts reaching the same lines (the
proof of the NFS root, then the terminal's ready line: what vlab's verdict waits for),
in the same run. Prints both wall times, their ratio and vlab's own peak memory.

Run as root: make bench (or .venv/bin/python bench/bench.py --rounds 5). --storm 1,5,10,20:
boot storms against one export (each terminal's seconds to its NFS mount and to ready).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vlab import scenario  # noqa: E402
from vlab.nodes import labhost  # noqa: E402
from vlab.plan.cmdline import TUNING_ARGS  # noqa: E402
from vlab.plan.lab import NETNS, Dirs, LabPlan  # noqa: E402
from vlab.verbs.claim import plan_for  # noqa: E402
from vlab.watch.guesttext import MARKER, READY_MARKER  # noqa: E402

SCENARIO = "bench/bench.toml"
TAP = "vlbench0"
VLAB = [sys.executable, "-m", "vlab"]


def vlab(*args: str) -> None:
    subprocess.run([*VLAB, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def timed_vlab_up() -> tuple[float, int]:
    """Wall seconds of `vlab up` and its peak RSS in KiB (vlab and what it waited for)."""
    start = time.monotonic()
    proc = subprocess.Popen([*VLAB, "up", SCENARIO], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("bench: vlab up failed; run it by hand to see why")
    return wall, usage.ru_maxrss


def bare_qemu(plan: LabPlan, tuned: bool) -> float:
    """The same kernel, initrd, MAC and network, with no libvirt and no vlab; the command
    line as a person writes it by hand (the words the initrd needs), or with vlab's own
    tuning words too (`tuned`)."""
    t = plan.terminals[0]
    ns = ["ip", "netns", "exec", plan.netns]
    subprocess.run(["ip", "-n", plan.netns, "tuntap", "add", TAP, "mode", "tap"], check=True)
    subprocess.run(["ip", "-n", plan.netns, "link", "set", TAP, "master", plan.bridge, "up"],
                   check=True)
    cmdline = " ".join(w for w in t.cmdline.split() if tuned or w not in TUNING_ARGS)
    argv = [*ns, "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", str(t.memory_mib),
            "-smp", str(t.vcpus), "-nographic", "-kernel", str(plan.kernel_path),
            "-initrd", str(plan.initrd_path), "-append", cmdline,
            "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={t.mac}"]
    start = time.monotonic()
    qemu = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.PIPE)
    try:
        assert qemu.stdout is not None
        # The line vlab's verdict is decided on: the proof of the NFS root, then the
        # root's own init saying the terminal is up.
        proven = False
        for raw in qemu.stdout:
            proven = proven or MARKER.encode() in raw
            if proven and READY_MARKER.encode() in raw:
                return time.monotonic() - start
        sys.exit("bench: bare qemu ended without the NFS-root proof and the ready line")
    finally:
        qemu.kill()
        qemu.wait()
        subprocess.run(["ip", "-n", plan.netns, "link", "del", TAP], check=False)
    raise AssertionError


BUILDER_SCENARIOS = (("vlab (busybox root)", "scenarios/tiny.toml"),
                     ("initramfs-tools (Debian root)", "scenarios/debian-initramfs-tools.toml"),
                     ("dracut (Debian root)", "scenarios/debian-dracut.toml"))


PEAK_RSS = ("import resource, subprocess, sys\n"
            "code = subprocess.run(sys.argv[1:], stderr=subprocess.DEVNULL).returncode\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(code)\n")


def builders() -> None:
    """Per initrd builder: `vlab up` with the initrd (and the export's image) built cold,
    then warm, the guest's seconds from domain start to verdict (its root already
    bootstrapped and cached), and the largest peak RSS of any process of the run (the
    builder's, in its sandbox, included: getrusage of the waited-for descendants)."""
    dirs = Dirs.from_env()
    for label, path in BUILDER_SCENARIOS:
        vlab("down", path)
        runs = []
        for cold in (True, False):
            if cold:
                for made in [*(dirs.cache / "initrds").glob("*.img"),
                             *(dirs.cache / "exports").glob("*.ext4")]:
                    made.unlink()
            start = time.monotonic()
            # A parent of its own for each run: its waited-for descendants' peak is this run's.
            done = subprocess.run(
                [sys.executable, "-c", PEAK_RSS, *VLAB, "up", path, "--json"], cwd=ROOT,
                capture_output=True, text=True, check=True)
            wall = time.monotonic() - start
            verdicts = [t["seconds"] for t in json.loads(done.stdout)["terminals"]]
            peak_kib = int(done.stderr.strip().splitlines()[-1])
            runs.append(f"{'cold' if cold else 'warm'} up {wall:6.1f} s "
                        f"(boot to verdict {max(verdicts):5.1f} s, peak RSS "
                        f"{peak_kib / 1024:4.0f} MiB)")
            vlab("down", path)
        print(f"{label:<32} " + "   ".join(runs), flush=True)


ONE, TEN, WRONG = "tests/scenarios/one.toml", "scenarios/ten.toml", \
    "tests/scenarios/wrong-export.toml"


def _up_json(path: str) -> tuple[float, dict[str, object]]:
    start = time.monotonic()
    out = subprocess.run([*VLAB, "up", path, "--json"], cwd=ROOT, capture_output=True,
                         text=True).stdout
    return time.monotonic() - start, json.loads(out)


def _qemu_cpu_seconds(domain: str) -> float:
    """CPU seconds the QEMU process of a domain has used so far (user + system)."""
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if f"guest={domain},".encode() in cmd:
            return (int(stat[11]) + int(stat[12])) / tick
    raise SystemExit(f"bench: no QEMU process for {domain}")


def scale(rounds: int = 3) -> None:
    """Ten terminals against one, in one run: the target is stated against the CPU limit of
    TCG guests sharing the cores: 10 terminals within 1.2x of (10 x one's CPU s / cores)."""
    vlab("lab-host", "up")
    for path in (ONE, TEN, WRONG):
        vlab("down", path)
    vlab("up", ONE)  # warm artifacts
    vlab("down", ONE)
    cores = os.cpu_count() or 1
    ones, cpus, tens, goods, wrongs = [], [], [], [], []
    for i in range(rounds):
        _wall, rep = _up_json(ONE)
        t = rep["terminals"][0]  # type: ignore[index]
        cpus.append(_qemu_cpu_seconds(t["domain"]))
        ones.append(t["seconds"])
        goods.append(t["seconds"])
        vlab("down", ONE)
        _wall, rep = _up_json(TEN)
        verdicts = [t["verdict"] for t in rep["terminals"]]  # type: ignore[union-attr]
        if verdicts != ["ok"] * 10:
            raise SystemExit(f"bench: ten terminals: {verdicts}")
        terms = rep["terminals"]  # type: ignore[union-attr]
        # First domain started to last verdict.
        tens.append(max(t["booted_at"] + t["seconds"] for t in terms)
                    - min(t["booted_at"] for t in terms))
        vlab("down", TEN)
        _wall, rep = _up_json(WRONG)
        wrongs.append(rep["terminals"][0]["seconds"])  # type: ignore[index]
        vlab("down", WRONG)
        print(f"round {i + 1}: 1 terminal {ones[-1]:.1f} s ({cpus[-1]:.1f} CPU s), "
              f"10 terminals {tens[-1]:.1f} s, wrong export {wrongs[-1]:.1f} s", flush=True)
    one, cpu, ten = statistics.median(ones), statistics.median(cpus), statistics.median(tens)
    limit = 10 * cpu / cores
    good, wrong = statistics.median(goods), statistics.median(wrongs)
    print(f"1 terminal to its verdict:    {one:.1f} s, {cpu:.1f} CPU s of its QEMU")
    print(f"10 terminals to all verdicts: {ten:.1f} s   (median of {rounds})")
    print(f"CPU limit 10 x {cpu:.1f} / {cores} cores = {limit:.1f} s; "
          f"10 terminals / limit = {ten / limit:.2f}x   (target <= 1.2x)")
    print(f"wrong export to its verdict:  {wrong:.1f} s vs good boot {good:.1f} s = "
          f"{wrong / good:.2f}x   (target <= 1.5x)")


def storm(sizes: list[int], out: Path) -> None:
    """A boot storm: N terminals switched on at once against one export (vlab's busybox
    root, its own initrd), as a room of terminals after a power cut. For each N: every
    terminal's seconds to its NFS mount and to ready, and the spread; the boot report of
    the largest storm goes to `out`."""
    vlab("lab-host", "up")
    for n in sizes:
        path = ROOT / "bench" / f"storm-{n}.toml"
        path.write_text(f'# generated by bench/bench.py --storm\n[lab]\nname = "storm{n}"\n'
                        f"timeout = {300 + 15 * n}\nstall = {45 + n}\n"
                        + "".join(f'[[terminal]]\nname = "s{i:03d}"\nmemory = 192\n'
                                  for i in range(n)))
        try:
            vlab("down", str(path))
            start = time.monotonic()
            proc = subprocess.run([*VLAB, "up", str(path), "--json", "--report",
                                   str(out if n == max(sizes) else out.with_suffix(f".{n}.html"))],
                                  cwd=ROOT, capture_output=True, text=True)
            wall = time.monotonic() - start
            rep = json.loads(proc.stdout) if proc.stdout else {"terminals": []}
        finally:
            vlab("down", str(path))
            path.unlink(missing_ok=True)
        terms = rep["terminals"]
        mounted = sorted(next((at for ph, at in t["phases"] if ph == "nfs-mounted"), float("nan"))
                         for t in terms)
        ready = sorted(t["seconds"] or float("nan") for t in terms)
        oks = sum(t["verdict"] == "ok" for t in terms)
        q = statistics.quantiles(ready, n=10) if len(ready) > 1 else ready * 9
        print(f"storm of {n:3d}: {oks}/{n} ok, `vlab up` {wall:6.1f} s; to NFS mount "
              f"median {statistics.median(mounted):5.1f} s, max {mounted[-1]:5.1f} s; to ready "
              f"median {statistics.median(ready):5.1f} s, p90 {q[-1]:5.1f} s, "
              f"max {ready[-1]:5.1f} s", flush=True)
        if n == max(sizes):
            print(f"  {'terminal':10} {'mounted s':>9} {'ready s':>8} verdict")
            for t in sorted(terms, key=lambda t: t["seconds"] or 0):
                at = next((a for ph, a in t["phases"] if ph == "nfs-mounted"), None)
                print(f"  {t['name']:10} {at if at is not None else '-':>9} "
                      f"{t['seconds']:>8} {t['verdict']}")
            print(f"  boot report: {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--builders", action="store_true",
                        help="time each initrd builder instead: cold and warm build, boot")
    parser.add_argument("--storm", metavar="N[,N...]",
                        help="boot storms of N terminals at once against one export, e.g. "
                        "1,5,10,20: each terminal's seconds to NFS mount and to ready")
    parser.add_argument("--report", type=Path, default=ROOT / "bench-storm.html",
                        help="with --storm: the boot report of the largest storm")
    parser.add_argument("--scale", action="store_true",
                        help="1 vs 10 terminals to all verdicts; a wrong export vs a good boot")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    # The benchmark starts the isolated lab host (a warm one, as a developer's) and leaves
    # the machine as it found it: one it started is stopped at the end, whatever happened.
    found_down = labhost.status(NETNS).mode == "down"
    try:
        return measure(args)
    finally:
        if found_down and labhost.status(NETNS).mode != "down":
            vlab("lab-host", "down")


def measure(args: argparse.Namespace) -> int:
    if args.builders:
        builders()
        return 0
    if args.scale:
        scale()
        return 0
    if args.storm:
        storm(sorted({int(n) for n in args.storm.split(",")}), args.report)
        return 0
    plan = plan_for(scenario.load(ROOT / SCENARIO), Dirs.from_env())
    vlab("lab-host", "up")  # a warm lab host, like a developer's running libvirtd
    vlab("down", SCENARIO)
    vlab("up", SCENARIO)  # warm the artifact cache
    vlab("down", SCENARIO)
    ups, hands, tuneds, rss = [], [], [], []
    for i in range(args.rounds):
        wall, peak = timed_vlab_up()
        ups.append(wall)
        rss.append(peak)
        # Keep vlab's network and NFS server; replace its guest by a bare QEMU.
        subprocess.run([*VLAB, "down", SCENARIO], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        vlab("up", SCENARIO)
        _destroy_guest(plan)
        hands.append(bare_qemu(plan, tuned=False))
        tuneds.append(bare_qemu(plan, tuned=True))
        vlab("down", SCENARIO)
        print(f"round {i + 1}: vlab up {wall:.2f} s, bare qemu {hands[-1]:.2f} s "
              f"(hand-written command line), {tuneds[-1]:.2f} s (vlab's)", flush=True)
    up, hand, tuned = (statistics.median(x) for x in (ups, hands, tuneds))
    n = args.rounds
    print(f"vlab up (warm, 1 terminal):          {up:.2f} s   (median of {n})")
    print(f"bare qemu, hand-written command line: {hand:.2f} s   (median of {n})")
    print(f"bare qemu, vlab's command line:       {tuned:.2f} s   (median of {n})")
    print(f"ratio vlab / bare hand-written:       {up / hand:.3f}x   (target <= 1.0x)")
    print(f"ratio vlab / bare, same command line: {up / tuned:.3f}x   (target <= 1.10x)")
    print(f"vlab peak RSS:                        {max(rss) / 1024:.1f} MiB   (target < 50)")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"(bench process itself:      {own / 1024:.1f} MiB)")
    return 0


def _destroy_guest(plan: LabPlan) -> None:
    import libvirt

    conn = libvirt.open(plan.uri)
    for t in plan.terminals:
        conn.lookupByName(t.domain).destroy()
    conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
