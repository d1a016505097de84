"""A developer's workstation on this one machine, for the system-mode tests (issue 18).

It lives in a network namespace and a mount namespace of its own: its own /run (so its own
/run/libvirt and /run/netns), its own /etc/libvirt, /var/lib/libvirt, /var/log/libvirt and
/var/lib/vlab; virtlogd and libvirtd started the way a distribution starts them (daemons, the
`default` NAT network defined, autostarted and active), and, as on many developer machines,
an rpcbind and a dnsmasq of its own (this one serves DNS and DHCP to the LAN). Its "LAN" is a
veth pair into a second namespace the test owns (`vlab-test-lan`), whose hosts route every
private address through the workstation: the worst LAN for a lab to face.

vlab runs inside with `nsenter` (`Workstation.vlab`), and finds a libvirtd it did not start:
system mode. `probe()` runs in the LAN namespace and says what answered there.

Run as `python workstation.py inside DIR SUBNET` by `start()`, already in both namespaces;
`python workstation.py probe JSON` in the LAN namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from namespaced import kill_all

NETNS, LAN_NETNS = "vlab-test-ws", "vlab-test-lan"
LINK, LAN_LINK = "wslan0", "lan0"
ADDR, LAN_ADDR = "10.215.0.2", "10.215.0.1"  # the workstation's LAN address, a LAN host's
LAN_RANGE = ("10.215.0.100", "10.215.0.150")  # what the workstation's own dnsmasq hands out
OWN_DNS_NAME = "workstation.lan"
PRIVATE = ("/etc/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt",
           "/var/lib/vlab")


@dataclass(frozen=True)
class Workstation:
    dir: Path

    def anchor(self) -> int:
        return int(json.loads((self.dir / "pids.json").read_text())["libvirtd"])

    def run(self, *argv: str, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """argv on the workstation, as its user would run it there."""
        return subprocess.run(["nsenter", f"--net=/run/netns/{NETNS}",
                               f"--mount=/proc/{self.anchor()}/ns/mnt", "--", *argv],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})

    def virsh(self, *argv: str) -> str:
        return self.run("virsh", "-q", "-c", "qemu:///system", *argv, timeout=60).stdout

    def own_daemons(self) -> dict[str, int]:
        return {k: v for k, v in json.loads((self.dir / "pids.json").read_text()).items()
                if k in ("rpcbind", "dnsmasq")}


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def start(workdir: Path, default_subnet: str) -> Workstation:
    """The workstation, its `default` network on default_subnet (a /24), and its LAN."""
    stop(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for ns in (NETNS, LAN_NETNS):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", LINK, "netns", NETNS, "type", "veth", "peer", "name", LAN_LINK,
       "netns", LAN_NETNS)
    sh("ip", "-n", NETNS, "addr", "add", f"{ADDR}/24", "dev", LINK)
    sh("ip", "-n", NETNS, "link", "set", LINK, "up")
    sh("ip", "-n", LAN_NETNS, "addr", "add", f"{LAN_ADDR}/24", "dev", LAN_LINK)
    sh("ip", "-n", LAN_NETNS, "link", "set", LAN_LINK, "up")
    # The LAN's hosts send every private address through the workstation.
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"):
        sh("ip", "-n", LAN_NETNS, "route", "add", net, "via", ADDR)
    subprocess.run(["ip", "netns", "exec", NETNS, "unshare", "--mount", "--propagation",
                    "private", sys.executable, __file__, "inside", str(workdir),
                    default_subnet], check=True, timeout=120)
    return Workstation(workdir)


def _inside(workdir: Path, default_subnet: str) -> None:
    sh("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run")
    for path in PRIVATE:
        mine = workdir / path.strip("/").replace("/", "-")
        if not mine.exists():
            if path == "/etc/libvirt":
                shutil.copytree(path, mine, symlinks=True)
                for old in (mine / "qemu").rglob("*.xml"):
                    old.unlink()  # no domain or network of the machine's
            else:
                mine.mkdir(parents=True)
        Path(path).mkdir(parents=True, exist_ok=True)
        sh("mount", "--bind", str(mine), path)
    sh("virtlogd", "-d")
    sh("libvirtd", "-d")
    deadline = time.monotonic() + 60
    while not Path("/run/libvirt/libvirt-sock").exists():
        if time.monotonic() > deadline:
            raise SystemExit("the workstation's libvirtd did not start")
        time.sleep(0.1)
    time.sleep(0.5)
    prefix = default_subnet.rsplit(".", 1)[0]
    xml = workdir / "default.xml"
    xml.write_text(f"""<network>
  <name>default</name>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='{prefix}.1' netmask='255.255.255.0'>
    <dhcp><range start='{prefix}.2' end='{prefix}.254'/></dhcp>
  </ip>
</network>
""")
    virsh = ["virsh", "-q", "-c", "qemu:///system"]
    sh(*virsh, "net-define", str(xml))
    sh(*virsh, "net-autostart", "default")
    sh(*virsh, "net-start", "default")
    sh("rpcbind", "-w")
    sh("dnsmasq", "--bind-interfaces", f"--listen-address={ADDR}", "--no-resolv",
       "--no-hosts", f"--address=/{OWN_DNS_NAME}/{ADDR}", f"--interface={LINK}",
       f"--dhcp-range={LAN_RANGE[0]},{LAN_RANGE[1]},12h", "--pid-file=/run/ws-dnsmasq.pid",
       f"--dhcp-leasefile={workdir}/ws-dnsmasq.leases")
    pids = {"mnt": os.readlink("/proc/self/ns/mnt"),
            "libvirtd": int(Path("/run/libvirtd.pid").read_text()),
            "rpcbind": int(sh("pidof", "rpcbind").split()[0]),
            "dnsmasq": int(Path("/run/ws-dnsmasq.pid").read_text())}
    (workdir / "pids.json").write_text(json.dumps(pids))


def stop(workdir: Path) -> None:
    kill_all(workdir)
    for ns in (NETNS, LAN_NETNS):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    (workdir / "pids.json").unlink(missing_ok=True)


# What a LAN host sees. Each probe says whether anything answered.

def _tcp(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=2):
            return True
    except OSError:
        return False


def _udp(addr: str, port: int, payload: bytes) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        try:
            s.sendto(payload, (addr, port))
            s.recvfrom(2048)
            return True
        except OSError:
            return False


def _dns_query(name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", 0x5a5a, 0x0100, 1, 0, 0, 0) + labels + b"\0\1\0\1"


def _rpc_null(program: int) -> bytes:
    return struct.pack(">IIIIII", 0x7a7a, 0, 2, program, 2, 0) + b"\0" * 16


def _dhcp_offers() -> list[tuple[str, str]]:
    """(server, offered address) of every DHCPOFFER to one DISCOVER broadcast on the LAN."""
    mac = bytes.fromhex("02aabbccddee")
    discover = (struct.pack(">BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x12345678, 0, 0x8000,
                            b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, mac, b"", b"")
                + b"\x63\x82\x53\x63" + b"\x35\x01\x01\xff")
    offers = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, LAN_LINK.encode())
        s.bind(("0.0.0.0", 68))
        s.sendto(discover, ("255.255.255.255", 67))
        deadline = time.monotonic() + 4
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, (server, _port) = s.recvfrom(2048)
            except OSError:
                break
            if len(data) > 240 and data[4:8] == b"\x12\x34\x56\x78":
                offers.append((server, socket.inet_ntoa(data[16:20])))
    return offers


def _probe(targets: dict[str, list[str]]) -> dict[str, object]:
    """targets: "tcp" -> ["ADDR:PORT"...], "dns"/"tftp"/"rpc" -> ["ADDR"...]."""
    seen: dict[str, object] = {}
    for target in targets.get("tcp", []):
        addr, port = target.rsplit(":", 1)
        seen[f"tcp {target}"] = _tcp(addr, int(port))
    for addr in targets.get("dns", []):
        seen[f"dns {addr}"] = _udp(addr, 53, _dns_query(OWN_DNS_NAME))
    for addr in targets.get("tftp", []):
        seen[f"tftp {addr}"] = _udp(addr, 69, b"\0\1pxelinux.0\0octet\0")
    for addr in targets.get("rpc", []):
        seen[f"rpcbind {addr}"] = _udp(addr, 111, _rpc_null(100000))
    seen["dhcp offers"] = _dhcp_offers()
    return seen


def probe(targets: dict[str, list[str]]) -> dict[str, object]:
    """What answered a LAN host that asked targets, and every DHCP offer it got."""
    done = subprocess.run(["ip", "netns", "exec", LAN_NETNS, sys.executable, __file__,
                           "probe", json.dumps(targets)], capture_output=True, text=True,
                          timeout=300, check=True)
    return dict(json.loads(done.stdout))


if __name__ == "__main__":
    if sys.argv[1] == "inside":
        _inside(Path(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "probe":
        print(json.dumps(_probe(json.loads(sys.argv[2]))))
