#!/usr/bin/env python3
"""Benchmark: a PXE twin against a bare QEMU netboot of the very same files, per firmware and
protocol, in the same run.

Each case is one machine (its firmware, its netboot). vlab's side: `vlab pxe --twins` of a
scenario with that machine alone (the tree written once, then `--twins-only` each round), the
twin's seconds from its domain's start to the initrd's first line (the report's `initrd`
phase: firmware, DHCP, loaders and transfers are all before it) and to its verdict. The bare
side: `qemu-system-x86_64` with the same firmware netbooting the same tree from QEMU's own
DHCP and TFTP (`-netdev user,tftp=TREE,bootfile=...`; for iPXE's HTTP, a lighttpd on the
loopback, QEMU's 10.0.2.2), to the same initrd line; where QEMU's DHCP cannot do it (UEFI
HTTP boot needs its vendor class answered; UEFI iPXE its user class, else the firmware and
iPXE get the same file, a loop), a bare dnsmasq and lighttpd on a bridge in a network
namespace of the bench's own, started by hand, no libvirt. A site whose machines boot over
TFTP has one more twin (the default config's), booted beside the machine's: the bare side
then boots two guests side by side too. Target: the twin within 1.2x.

Cases: bios-tftp (SeaBIOS, the NIC's iPXE, pxelinux), bios-ipxe (the NIC's iPXE fetching the
script, kernel and initrd over HTTP), uefi-tftp (OVMF, shim, GRUB over TFTP), uefi-http and
uefi-secure-http (UEFI HTTP boot of the RAM disk image), uefi-ipxe (OVMF's PXE, snponly.efi,
then HTTP).

    .venv/bin/python bench/twin_bench.py [--rounds 3] [--cases bios-tftp,uefi-http]
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

from vlab.build import efi  # noqa: E402
from vlab.plan.site import http_image, ipxe_script  # noqa: E402

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
    "uefi-ipxe": ("uefi", "ipxe"),
}
DEFAULT_MAC = "52:54:00:81:00:02"  # the bare side's second guest, beside a TFTP case's
NETNS = "vlab-bench-bare"
BRIDGE, GATEWAY = "br0", "10.213.82.1"


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


def web_server(tree: Path, work: Path, netns: str | None) -> subprocess.Popen[bytes]:
    conf = work / "lighttpd.conf"
    conf.write_text(f'server.bind = "{GATEWAY if netns else "127.0.0.1"}"\n'
                    f'server.port = {80 if netns else PORT}\n'
                    f'server.document-root = "{tree}"\nserver.username = "www-data"\n'
                    f'server.groupname = "www-data"\nserver.modules = ("mod_alias")\n'
                    f'alias.url = ("/vlab/" => "{tree}/")\n')
    server = subprocess.Popen([*_in(netns), "lighttpd", "-D", "-f", str(conf)],
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return server


def _in(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def bare_network(case: str, tree: Path, work: Path) -> list[subprocess.Popen[bytes]]:
    """A bridge, a tap, dnsmasq (DHCP with the HTTP boot and iPXE answers as the twins' lab
    gives them, no ping, iPXE's no-pxedhcp; TFTP; router advertisements) and lighttpd, in
    the bench's own namespace."""
    ip = ["ip", "-n", NETNS]
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    for cmd in (["link", "set", "lo", "up"], ["link", "add", BRIDGE, "type", "bridge"],
                ["addr", "add", f"{GATEWAY}/24", "dev", BRIDGE],
                ["addr", "add", "fd00:213:82::1/64", "dev", BRIDGE],
                ["link", "set", BRIDGE, "up"], ["tuntap", "add", "tap0", "mode", "tap"],
                ["link", "set", "tap0", "master", BRIDGE, "up"]):
        subprocess.run([*ip, *cmd], check=True)
    url = f"http://{GATEWAY}/vlab/"
    answers = (["--dhcp-vendorclass=set:httpclient,HTTPClient",
                "--dhcp-option-force=tag:httpclient,60,HTTPClient",
                f"--dhcp-boot=tag:httpclient,{url}{http_image(MAC)}"]
               if CASES[case][1] == "http" else
               ["--dhcp-boot=tag:!ipxe,snponly.efi",
                f"--dhcp-boot=tag:ipxe,{url}{ipxe_script(MAC)}"])
    dnsmasq = subprocess.Popen([
        *_in(NETNS), "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
        f"--interface={BRIDGE}", "--bind-interfaces", "--port=0",
        "--dhcp-range=10.213.82.100,10.213.82.200", "--dhcp-range=fd00:213:82::,ra-only",
        "--dhcp-userclass=set:ipxe,iPXE",
        "--enable-ra", "--enable-tftp", f"--tftp-root={tree}", "--no-ping",
        "--dhcp-option=tag:ipxe,encap:175,176,1", *answers,
        f"--pid-file={work / 'dnsmasq.pid'}", f"--dhcp-leasefile={work / 'leases'}"],
        stderr=subprocess.DEVNULL)
    return [dnsmasq, web_server(tree, work, NETNS)]


def bare(case: str, tree: Path, work: Path) -> float:
    """A bare QEMU of the case's firmware, netbooting the tree: seconds to the initrd's
    first line (and, for a TFTP case, a second guest booting the default config beside it)."""
    firmware, netboot = CASES[case]
    own = netboot == "http" or (netboot == "ipxe" and firmware != "bios")

    def argv(mac: str, n: int) -> list[str]:
        nic = f"virtio-net-pci,netdev=n0,mac={mac}"
        net = ("tap,id=n0,ifname=tap0,script=no,downscript=no" if own else
               f"user,id=n0,tftp={tree},bootfile=" + (
                   f"http://10.0.2.2:{PORT}/vlab/{ipxe_script(mac)}" if netboot == "ipxe"
                   else "pxelinux.0" if firmware == "bios" else efi.SHIM))
        out = [*_in(NETNS if own else None), "qemu-system-x86_64", "-accel", "tcg",
               "-nographic", "-no-reboot", "-netdev", net]
        if firmware == "bios":
            return [*out, "-machine", "pc", "-m", "256", "-boot", "n", "-device", nic]
        code, template = efi.firmware(firmware)
        variables = work / f"vars{n}.fd"
        shutil.copyfile(template, variables)
        out += ["-machine", "q35,smm=on" if firmware == "uefi-secure" else "q35", "-m", "512",
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
                "-device", nic + ",romfile="]
        if firmware == "uefi-secure":
            out += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        if netboot == "http":  # as the twin: OVMF's PXE off, HTTP boot first
            out += ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
                    "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]
        return out

    side = []
    if netboot == "tftp":  # the default config's twin boots beside the machine's
        side.append(subprocess.Popen(argv(DEFAULT_MAC, 1), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.PIPE))
    start = time.monotonic()
    qemu = subprocess.Popen(argv(MAC, 0), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.PIPE)
    try:
        return seconds_to_initrd(qemu, start, case)
    finally:
        for q in (qemu, *side):
            q.kill()
            q.wait()


def main() -> int:
    rounds, cases = chosen(__doc__, CASES)
    work = Path(tempfile.mkdtemp(prefix="vlab-twin-bench-"))
    print(f"{'case':<18} {'twin to initrd':>15} {'bare to initrd':>15} {'ratio':>7} "
          f"{'twin to verdict':>16}   (medians of {rounds})", flush=True)
    try:
        for case in cases:
            path = scenario(work, case)
            tree = TREES / case
            shutil.rmtree(tree, ignore_errors=True)
            twins: list[tuple[float, float]] = []
            bares: list[float] = []
            servers: list[subprocess.Popen[bytes]] = []
            firmware, netboot = CASES[case]
            try:
                for i in range(rounds):
                    twins.append(twin(path, tree, write=i == 0))
                    if not servers and netboot == "ipxe" and firmware == "bios":
                        servers = [web_server(tree, work, None)]
                    elif not servers and netboot != "tftp":
                        servers = bare_network(case, tree, work)
                    bares.append(bare(case, tree, work))
            finally:
                for server in servers:
                    server.terminate()
                    server.wait()
                subprocess.run(["ip", "netns", "del", NETNS], stderr=subprocess.DEVNULL,
                               check=False)
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
