"""A nested hypervisor host for the Xen and KVM tests: a Debian machine under QEMU (TCG) that
runs libvirtd, reached by vlab as a `[[node]]` over SSH, as a user's own Xen or KVM host is.

One image serves both kinds (built once per set of inputs, cached; mmdebstrap ~75 s):

- **xen**: QEMU loads Debian's Xen hypervisor (`-kernel xen.elf`, multiboot) with the image's
  kernel as dom0; `-cpu Nehalem`, the only model under which Xen, dom0 and libvirt's Xen
  driver all run here (docs/xen.md). libvirtd answers `xen+ssh://`.
- **kvm**: QEMU boots the image's kernel directly with `-cpu EPYC`, whose SVM TCG emulates:
  `kvm_amd` loads and `/dev/kvm` runs guests. libvirtd answers `qemu+ssh://`.

Like simhost.py's second host, each lives in a network namespace of its own, joined to the
lab host's namespace by a veth pair: there a bridge with a dnsmasq (the host's LAN: DHCP for the
host and its guests, the way to the lab's NFS server) and the QEMU process. The nested host
bridges its NIC (`BRIDGE`), so the terminals' NICs are on that LAN too. The host key it was
built with is trusted in the machine's known_hosts (marked, removed by stop()).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

LAB_HOST_NETNS = "vlab-host"
SUITE = "bookworm"
BRIDGE = "br0"  # the nested host's bridge, with its NIC in it: its guests' LAN
# Its NIC's MAC, and its bridge's (the one its LAN's dnsmasq pins): the same for both kinds,
# as their LANs are in namespaces of their own.
MAC = "52:54:00:e0:00:02"
NO_LEASE_MAC = "00:16:3e:00:00:de"  # a guest the LAN's DHCP server ignores (a failure case)
XEN_PACKAGES = ("xen-hypervisor-4.17-amd64", "xen-hypervisor-common")
PACKAGES = ("systemd-sysv", "udev", "kmod", "linux-image-amd64", "initramfs-tools",
            "xen-utils-4.17", "xen-utils-common", "libvirt-daemon-driver-xen",
            "libvirt-daemon-system", "libvirt-clients", "libvirt-daemon-driver-qemu",
            "qemu-system-x86", "openssh-server", "iproute2", "procps", "netbase")
KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")


@dataclass(frozen=True)
class Kind:
    name: str  # "xen" or "kvm"
    netns: str
    addr: str  # its namespace's end of the veth pair
    peer: str  # the lab host's end: where the lab's NFS server answers its guests
    links: tuple[str, str]  # veth ends: in its namespace, in the lab host's
    subnet: str  # its LAN
    ip: str  # the nested host's address, pinned by the LAN's dnsmasq
    dir: Path  # its run folder: the key the scenarios name, logs, the disk overlay

    @property
    def gateway(self) -> str:
        return self.subnet.rsplit(".", 1)[0] + ".1"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def mark(self) -> str:  # the comment on its known_hosts line
        return self.netns


XEN = Kind("xen", "vlab-test-xen", "10.214.2.2", "10.214.2.1", ("vx2b", "vx2a"),
           "10.214.3.0/24", "10.214.3.2", Path("/var/tmp/vlab-test-xen"))
KVM = Kind("kvm", "vlab-test-kvm", "10.214.4.2", "10.214.4.1", ("vk2b", "vk2a"),
           "10.214.5.0/24", "10.214.5.2", Path("/var/tmp/vlab-test-kvm"))


def image_files() -> dict[str, str]:
    """The image's own files beside the packages: guest consoles logged by xenconsoled
    (only with these arguments), and systemd-networkd putting the NIC into BRIDGE with DHCP
    on the bridge. The bridge carries the NIC's MAC (the one the LAN pins; measured:
    networkd gives a bridge a generated MAC otherwise, whatever MACAddress=none says)."""
    return {
        "etc/default/xen": 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"\n',
        "etc/systemd/network/10-br.netdev": f"[NetDev]\nName={BRIDGE}\nKind=bridge\n"
                                            f"MACAddress={MAC}\n",
        "etc/systemd/network/20-nic.network": f"[Match]\nName=en*\n[Network]\nBridge={BRIDGE}\n",
        "etc/systemd/network/30-br.network": f"[Match]\nName={BRIDGE}\n[Network]\nDHCP=ipv4\n"
                                             "[DHCPv4]\nClientIdentifier=mac\n",
        "etc/fstab": "/dev/vda / ext4 rw 0 1\n",
        "etc/hostname": "nested\n",
        "etc/modules-load.d/vlab-test.conf": "xen-netback\n",
    }


@dataclass(frozen=True)
class Image:
    """The cached files a start boots: Xen's ELF, the kernel, initrd and root image, the key
    vlab logs in with, and the image's own host key (public half)."""

    dir: Path


def run(*argv: str, timeout: float = 600) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          timeout=timeout).stdout


def inputs_key() -> str:
    files = sorted(image_files().items())
    return hashlib.sha256(repr((SUITE, XEN_PACKAGES, PACKAGES, files)).encode()).hexdigest()[:16]


def build(cache: Path) -> Image:
    """The image in `cache`/test-nestedhost-KEY, built unless it is there."""
    out = cache / f"test-nestedhost-{inputs_key()}"
    if (out / "done").exists():
        return Image(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vlab-test-nested",
        "-f", str(tmp / "id_ed25519"))
    debs = tmp / "debs"
    debs.mkdir()
    subprocess.run(["apt-get", "download", *XEN_PACKAGES], cwd=debs, check=True,
                   capture_output=True, timeout=300)
    for deb in debs.glob("*.deb"):
        run("dpkg-deb", "-x", str(deb), str(debs / "x"))
    xen_gz = next((debs / "x" / "boot").glob("xen-*-amd64.gz"))
    (tmp / "xen.elf").write_bytes(subprocess.run(["zcat", str(xen_gz)], check=True,
                                                 capture_output=True).stdout)
    root = tmp / "root"
    hooks = ['mkdir -p "$1/var/log/xen/console" "$1/root/.ssh" "$1/etc/systemd/network"',
             f'cp {tmp / "id_ed25519.pub"} "$1/root/.ssh/authorized_keys"',
             'chroot "$1" systemctl enable systemd-networkd']
    run("mmdebstrap", "--variant=apt", "--include=" + ",".join(PACKAGES),
        *(f"--customize-hook={h}" for h in hooks), SUITE, str(root), timeout=1200)
    for rel, text in image_files().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    shutil.copy(next((root / "boot").glob("vmlinuz-*")), tmp / "vmlinuz")
    shutil.copy(next((root / "boot").glob("initrd.img-*")), tmp / "initrd.img")
    shutil.copy(root / "etc/ssh/ssh_host_ed25519_key.pub", tmp / "host_key.pub")
    run("mkfs.ext4", "-q", "-F", "-d", str(root), str(tmp / "root.img"), "3G")
    shutil.rmtree(root)
    shutil.rmtree(debs)
    (tmp / "done").write_text("")
    tmp.rename(out)
    return Image(out)


def start(kind: Kind, image: Image, timeout: float = 600) -> None:
    """Boot the nested host in its namespace (the lab host's namespace must exist); return
    once its libvirtd answers over SSH from the lab host's namespace."""
    stop(kind)
    kind.dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(image.dir / "id_ed25519", kind.key)
    disk = kind.dir / "disk.qcow2"  # its writes go here; the cached image stays as built
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
        str(image.dir / "root.img"), str(disk))
    run("ip", "netns", "add", kind.netns)
    ns = ("ip", "-n", kind.netns)
    link, peer_link = kind.links
    run(*ns, "link", "set", "lo", "up")
    run("ip", "link", "add", peer_link, "netns", LAB_HOST_NETNS, "type", "veth",
        "peer", "name", link, "netns", kind.netns)
    run(*ns, "addr", "add", f"{kind.addr}/30", "dev", link)
    run(*ns, "link", "set", link, "up")
    run("ip", "-n", LAB_HOST_NETNS, "addr", "add", f"{kind.peer}/30", "dev", peer_link)
    run("ip", "-n", LAB_HOST_NETNS, "link", "set", peer_link, "up")
    # The lab host reaches the nested host and its guests (vlab ssh) through the veth.
    run("ip", "-n", LAB_HOST_NETNS, "route", "add", kind.subnet, "via", kind.addr)
    run(*ns, "route", "add", "default", "via", kind.peer)
    run("ip", "netns", "exec", kind.netns, "sysctl", "-q", "net.ipv4.ip_forward=1")
    lan, tap = f"{kind.name}lan0", f"{kind.name}tap0"
    run(*ns, "link", "add", lan, "type", "bridge")
    run(*ns, "addr", "add", f"{kind.gateway}/24", "dev", lan)
    run(*ns, "link", "set", lan, "up")
    run(*ns, "tuntap", "add", "dev", tap, "mode", "tap")
    run(*ns, "link", "set", tap, "master", lan, "up")
    first = kind.subnet.rsplit(".", 1)[0]
    run("ip", "netns", "exec", kind.netns, "dnsmasq", f"--pid-file={kind.dir / 'dnsmasq.pid'}",
        f"--interface={lan}", "--bind-interfaces", "--port=0",
        f"--dhcp-range={first}.10,{first}.200,1h", f"--dhcp-host={MAC},{kind.ip}",
        f"--dhcp-host={NO_LEASE_MAC},ignore",
        f"--dhcp-leasefile={kind.dir / 'leases'}", f"--log-facility={kind.dir / 'dnsmasq.log'}",
        "--log-dhcp")
    # kvm_amd.npt=0: the host's KVM keeps its guests' page tables itself (shadow paging).
    # With nested paging, which TCG emulates here, 2 of 9 guests reset silently in their
    # initrd (qemu's log on the host: a shutdown, no panic on the console); 0 of 14 without.
    kernel = ["-cpu", "EPYC", "-kernel", str(image.dir / "vmlinuz"), "-append",
              "root=/dev/vda rw console=ttyS0 kvm_amd.npt=0",
              "-initrd", str(image.dir / "initrd.img")]
    if kind is XEN:
        kernel = ["-cpu", "Nehalem", "-kernel", str(image.dir / "xen.elf"),
                  "-append", "console=com1 com1=115200 dom0_mem=1024M,max:1024M",
                  "-initrd", f"{image.dir / 'vmlinuz'} root=/dev/vda rw console=hvc0,"
                             f"{image.dir / 'initrd.img'}"]
    run("ip", "netns", "exec", kind.netns, "qemu-system-x86_64", "-machine", "q35",
        "-accel", "tcg", "-m", "4096", "-smp", "2", "-display", "none", "-monitor", "none",
        "-serial", f"file:{kind.dir / 'serial.log'}", "-no-reboot", "-daemonize",
        "-pidfile", str(kind.dir / "qemu.pid"), *kernel,
        "-drive", f"file={disk},if=virtio,format=qcow2",
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC}")
    trust(kind, image.dir / "host_key.pub")
    uri = "xen:///system" if kind is XEN else "qemu:///system"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ssh(kind, f"virsh -c {uri} version", check=False, timeout=60).returncode == 0:
            if kind is XEN:
                # Xen's tuning advice: dom0 first. Its backends, xenconsoled and libvirtd
                # serve every guest; with the guests' equal share, dom0 on two TCG vCPUs
                # of a loaded machine answered nothing for minutes.
                ssh(kind, "xl sched-credit2 -d Domain-0 -w 1024")
            return
        time.sleep(5)
    raise TimeoutError(f"the nested {kind.name} host did not answer within {timeout} s: "
                       f"{kind.dir / 'serial.log'}")


def ssh(kind: Kind, command: str, *, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command on the nested host as root, from the lab host's namespace."""
    done = subprocess.run(["ip", "netns", "exec", LAB_HOST_NETNS, "ssh", "-i", str(kind.key),
                           "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                           f"root@{kind.ip}", command],
                          capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{command}: {done.returncode} {done.stderr}")
    return done


def trust(kind: Kind, host_pub: Path) -> None:
    """Its host key in the machine's known_hosts, as `ssh-keyscan >>` would put it."""
    lines = [ln for ln in (KNOWN_HOSTS.read_text().splitlines() if KNOWN_HOSTS.exists() else [])
             if not ln.endswith(kind.mark)]
    key_type, blob = host_pub.read_text().split()[:2]
    KNOWN_HOSTS.write_text("\n".join([*lines, f"{kind.ip} {key_type} {blob} {kind.mark}"]) + "\n")


def stop(kind: Kind) -> None:
    for name in ("qemu.pid", "dnsmasq.pid"):
        try:
            pid = int((kind.dir / name).read_text().split()[0])
        except (OSError, ValueError):
            continue
        subprocess.run(["kill", "-9", str(pid)], capture_output=True)
        (kind.dir / name).unlink(missing_ok=True)
    subprocess.run(["ip", "netns", "del", kind.netns], capture_output=True)
    subprocess.run(["ip", "-n", LAB_HOST_NETNS, "link", "del", kind.links[1]],
                   capture_output=True)
    subprocess.run(["ip", "-n", LAB_HOST_NETNS, "route", "del", kind.subnet], capture_output=True)
    (kind.dir / "disk.qcow2").unlink(missing_ok=True)
    if KNOWN_HOSTS.exists():
        lines = [ln for ln in KNOWN_HOSTS.read_text().splitlines() if not ln.endswith(kind.mark)]
        KNOWN_HOSTS.write_text("".join(f"{ln}\n" for ln in lines))
