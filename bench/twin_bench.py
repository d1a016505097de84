#!/usr/bin/env python3
"""Benchmark: a PXE twin against a bare QEMU netboot of the very same files, per firmware and
protocol, in the same run.

Each case is one machine (its firmware, its netboot). vlab's side: `vlab pxe --twins` of a
scenario with that machine alone (the tree written once, then `--twins-only` each round), the
twin's seconds from its domain's start to the initrd's first line (the report's `initrd`
phase: firmware, DHCP, loaders and transfers are all before it) and to its verdict. The bare
side: `qemu-system-x86_64` with the same firmware netbooting the same tree from QEMU's own
DHCP and TFTP (`-netdev user,tftp=TREE,bootfile=...`; for HTTP, a lighttpd on the loopback
at 10.0.2.2), to the same initrd line. Target: the twin within 1.2x.

Cases: bios-tftp (SeaBIOS, the NIC's iPXE, pxelinux), bios-ipxe (the NIC's iPXE fetching the
script, kernel and initrd over HTTP), uefi-tftp (OVMF, shim, GRUB over TFTP), uefi-http and
uefi-secure-http (UEFI HTTP boot of the RAM disk image; QEMU's DHCP cannot answer HTTP boot's
vendor class, so the bare side boots the same image from a local disk: a lower bound with no
network at all). Not here: uefi-ipxe, which QEMU's DHCP cannot do (it hands the firmware and
iPXE the same boot file, a loop).

    .venv/bin/python bench/twin_bench.py [--rounds 3] [--cases bios-tftp,uefi-http]
"""

from __future__ import annotations

import argparse
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

from vlab.build import efi  # noqa: E402
from vlab.plan.site import http_image, ipxe_script  # noqa: E402
from vlab.watch.judge import phase_of  # noqa: E402

VLAB = [sys.executable, "-m", "vlab"]
MAC = "52:54:00:81:00:01"
TREES = Path("/var/lib/vlab/bench-tftp")
PORT = 8089  # the bare side's web server, on the loopback (QEMU's 10.0.2.2)
CASES = {  # name: (firmware, netboot)
    "bios-tftp": ("bios", "tftp"),
    "bios-ipxe": ("bios", "ipxe"),
    "uefi-tftp": ("uefi", "tftp"),
    "uefi-http": ("uefi", "http"),
    "uefi-secure-http": ("uefi-secure", "http"),
}


def scenario(work: Path, case: str) -> Path:
    firmware, netboot = CASES[case]
    path = work / f"{case}.toml"
    path.write_text(f'[lab]\nname = "twinbench"\nsubnet = "10.213.81.0/24"\n[pxe]\n'
                    f'firmware = "{firmware}"\nnetboot = "{netboot}"\n'
                    f'[[machine]]\nname = "m1"\nmac = "{MAC}"\n')
    return path


def twin(path: Path, tree: Path, write: bool) -> tuple[float, float]:
    """The twin's seconds to the initrd's first line and to its verdict."""
    mode = "--twins" if write else "--twins-only"
    done = subprocess.run([*VLAB, "pxe", str(path), "--tftp-dir", str(tree), mode, "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        sys.exit(f"bench: vlab pxe {mode} failed:\n{done.stderr[-3000:]}")
    (t,) = [t for t in json.loads(done.stdout)["twins"]["terminals"] if t["name"] == "pxe-m1"]
    phases = dict(t["phases"])
    return phases["initrd"], t["seconds"]


def web_server(tree: Path, work: Path) -> subprocess.Popen[bytes]:
    conf = work / "lighttpd.conf"
    conf.write_text(f'server.bind = "127.0.0.1"\nserver.port = {PORT}\n'
                    f'server.document-root = "{tree}"\nserver.username = "www-data"\n'
                    f'server.groupname = "www-data"\nserver.modules = ("mod_alias")\n'
                    f'alias.url = ("/vlab/" => "{tree}/")\n')
    server = subprocess.Popen(["lighttpd", "-D", "-f", str(conf)])
    time.sleep(0.5)
    return server


def bare(case: str, tree: Path, work: Path) -> float:
    """A bare QEMU of the case's firmware, netbooting the tree: seconds to the initrd's
    first line."""
    firmware, netboot = CASES[case]
    nic = f"virtio-net-pci,netdev=n0,mac={MAC}"
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-nographic", "-no-reboot"]
    if firmware == "bios":
        boot = (f"http://10.0.2.2:{PORT}/vlab/{ipxe_script(MAC)}" if netboot == "ipxe"
                else "pxelinux.0")
        argv += ["-machine", "pc", "-m", "256", "-boot", "n",
                 "-netdev", f"user,id=n0,tftp={tree},bootfile={boot}", "-device", nic]
    else:
        code, template = efi.firmware(firmware)
        variables = work / "vars.fd"
        shutil.copyfile(template, variables)
        argv += ["-machine", "q35,smm=on" if firmware == "uefi-secure" else "q35", "-m", "512",
                 "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]
        if firmware == "uefi-secure":
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        if netboot == "http":  # the same image, from a local disk: no network at all
            argv += ["-drive", f"if=virtio,format=raw,readonly=on,file={tree / http_image(MAC)}"]
        else:
            argv += ["-netdev", f"user,id=n0,tftp={tree},bootfile={efi.SHIM}",
                     "-device", nic + ",romfile="]
    start = time.monotonic()
    qemu = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.PIPE)
    try:
        assert qemu.stdout is not None
        for raw in qemu.stdout:
            if phase_of(raw.decode(errors="replace")) == "initrd":
                return time.monotonic() - start
            if time.monotonic() - start > 300:
                break
        sys.exit(f"bench: bare qemu ({case}) never reached the initrd")
    finally:
        qemu.kill()
        qemu.wait()
    raise AssertionError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    cases = args.cases.split(",")
    for case in cases:
        if case not in CASES:
            sys.exit(f"bench: no case {case!r}; cases: {', '.join(CASES)}")
    work = Path(tempfile.mkdtemp(prefix="vlab-twin-bench-"))
    print(f"{'case':<18} {'twin to initrd':>15} {'bare to initrd':>15} {'ratio':>7} "
          f"{'twin to verdict':>16}   (medians of {args.rounds})", flush=True)
    try:
        for case in cases:
            path = scenario(work, case)
            tree = TREES / case
            shutil.rmtree(tree, ignore_errors=True)
            twins: list[tuple[float, float]] = []
            bares: list[float] = []
            server = None
            try:
                for i in range(args.rounds):
                    twins.append(twin(path, tree, write=i == 0))
                    if server is None and CASES[case][1] != "tftp":
                        server = web_server(tree, work)
                    bares.append(bare(case, tree, work))
            finally:
                if server is not None:
                    server.terminate()
                    server.wait()
            to_initrd = statistics.median(t for t, _v in twins)
            to_verdict = statistics.median(v for _t, v in twins)
            bare_initrd = statistics.median(bares)
            print(f"{case:<18} {to_initrd:>13.1f} s {bare_initrd:>13.1f} s "
                  f"{to_initrd / bare_initrd:>6.2f}x {to_verdict:>14.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(TREES, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
