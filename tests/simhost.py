"""A second hypervisor host on this one machine, for the many-hosts tests.

It lives in a network namespace and a mount namespace of its own: its own /run (so its own
/run/libvirt, virtlogd and libvirtd), its own /var/lib/libvirt and /var/log/libvirt, an empty
/var/cache/vlab (what vlab ships there really moves), and an sshd that listens only on its end
of a veth pair whose other end is in vlab's lab host namespace. vlab reaches it as a real
remote host: qemu+ssh:// for libvirt, SFTP for files, with a key made for the test and its
host key in the known_hosts file, as a user would trust a new host.

Run as `python simhost.py inside DIR` by `start()`, already in both namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from namespaced import kill_all

NETNS = "vlab-test-h2"
LAB_HOST_NETNS = "vlab-host"
ADDR, PEER = "10.214.0.2", "10.214.0.1"  # its veth end, and the lab host's
LINK, PEER_LINK = "vh2b", "vh2a"
NETWORK = "h2lab"  # the libvirt network its terminals join (the host's "existing" network)
SUBNET, GATEWAY = "10.214.1.0/24", "10.214.1.1"
KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
MARK = "vlab-test-h2"  # the comment on its known_hosts line
NETWORK_XML = f"""<network>
  <name>{NETWORK}</name>
  <forward mode='route' dev='{LINK}'/>
  <bridge name='h2br0' stp='off' delay='0'/>
  <ip address='{GATEWAY}' netmask='255.255.255.0'>
    <dhcp><range start='10.214.1.10' end='10.214.1.200'/></dhcp>
  </ip>
</network>
"""


@dataclass(frozen=True)
class SimHost:
    dir: Path
    key: Path  # the test's private key, for qemu+ssh and SFTP

    @property
    def uri(self) -> str:
        return f"qemu+ssh://root@{ADDR}/system?keyfile={self.key}"


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def trust(host_pub: Path) -> None:
    """Put its host key in the machine's known_hosts, as `ssh-keyscan >>` would."""
    lines = [ln for ln in (KNOWN_HOSTS.read_text().splitlines() if KNOWN_HOSTS.exists() else [])
             if not ln.endswith(MARK)]
    kind, blob = host_pub.read_text().split()[:2]
    KNOWN_HOSTS.write_text("\n".join([*lines, f"{ADDR} {kind} {blob} {MARK}"]) + "\n")


def distrust() -> None:
    if KNOWN_HOSTS.exists():
        lines = [ln for ln in KNOWN_HOSTS.read_text().splitlines() if not ln.endswith(MARK)]
        KNOWN_HOSTS.write_text("".join(f"{ln}\n" for ln in lines))


def start(workdir: Path) -> SimHost:
    """Start the second host; the lab host namespace must exist (vlab lab-host up)."""
    stop(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "id_ed25519"
    for path in (key, workdir / "ssh_host_ed25519_key"):
        if not path.exists():  # kept from run to run
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", MARK, "-f", str(path))
    shutil.copy(workdir / "id_ed25519.pub", workdir / "authorized_keys")
    run("ip", "netns", "add", NETNS)
    run("ip", "link", "add", PEER_LINK, "netns", LAB_HOST_NETNS, "type", "veth",
        "peer", "name", LINK, "netns", NETNS)
    run("ip", "-n", NETNS, "link", "set", "lo", "up")
    run("ip", "-n", NETNS, "addr", "add", f"{ADDR}/30", "dev", LINK)
    run("ip", "-n", NETNS, "link", "set", LINK, "up")
    run("ip", "-n", LAB_HOST_NETNS, "addr", "add", f"{PEER}/30", "dev", PEER_LINK)
    run("ip", "-n", LAB_HOST_NETNS, "link", "set", PEER_LINK, "up")
    # The lab host reaches the second host's terminals (vlab ssh) through it.
    run("ip", "-n", LAB_HOST_NETNS, "route", "add", SUBNET, "via", ADDR)
    subprocess.run(["ip", "netns", "exec", NETNS, "unshare", "--mount", "--propagation",
                    "private", sys.executable, __file__, "inside", str(workdir)],
                   check=True, timeout=120)
    trust(workdir / "ssh_host_ed25519_key.pub")
    return SimHost(dir=workdir, key=key)


def stop(workdir: Path) -> None:
    kill_all(workdir)
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "-n", LAB_HOST_NETNS, "link", "del", PEER_LINK], capture_output=True)
    distrust()
    (workdir / "pids.json").unlink(missing_ok=True)


def stop_sshd(workdir: Path) -> None:
    """The host stops answering SSH (as when it reboots); its libvirtd and guests stay."""
    pid = json.loads((workdir / "pids.json").read_text())["sshd"]
    os.kill(pid, 15)


def start_sshd(workdir: Path) -> None:
    subprocess.run(["nsenter", f"--net=/run/netns/{NETNS}",
                    f"--mount=/proc/{_anchor(workdir)}/ns/mnt", "/usr/sbin/sshd", "-f",
                    str(workdir / "sshd_config")], check=True)
    time.sleep(0.3)
    _record(workdir, f"/proc/{_anchor(workdir)}/root")


def _anchor(workdir: Path) -> int:
    return int(json.loads((workdir / "pids.json").read_text())["libvirtd"])


# ---- inside both namespaces -----------------------------------------------------------------


def _inside(workdir: Path) -> None:
    def private(target: str, source: Path | None = None) -> None:
        if source is None:
            run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", target)
        else:
            run("mount", "--bind", str(source), target)

    private("/run")
    for d in ("/run/sshd", "/run/lock", "/run/user"):
        os.makedirs(d, mode=0o755, exist_ok=True)
    for name in ("lib", "log", "cache"):  # fresh each start
        shutil.rmtree(workdir / name, ignore_errors=True)
        (workdir / name).mkdir()
    # Its own libvirt state, seeded from this machine's (users, capability cache, layout).
    run("cp", "-a", "/var/lib/libvirt/.", str(workdir / "lib"))
    run("cp", "-a", "/var/cache/libvirt/.", str(workdir / "cache"))
    for sub in ("qemu", "network", "dnsmasq"):
        for d in (workdir / "lib" / sub).glob("*"):
            if d.suffix in (".xml", ".status", ".leases") or d.name.startswith("domain-"):
                shutil.rmtree(d) if d.is_dir() else d.unlink()
    private("/var/lib/libvirt", workdir / "lib")
    private("/var/log/libvirt", workdir / "log")
    private("/var/cache/libvirt", workdir / "cache")
    os.makedirs("/var/cache/vlab", exist_ok=True)
    private("/var/cache/vlab")
    (workdir / "sshd_config").write_text(
        f"ListenAddress {ADDR}\nHostKey {workdir}/ssh_host_ed25519_key\nPidFile /run/sshd.pid\n"
        f"AuthorizedKeysFile {workdir}/authorized_keys\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nSubsystem sftp internal-sftp\n")
    run("virtlogd", "-d")
    run("libvirtd", "-d")
    run("/usr/sbin/sshd", "-f", str(workdir / "sshd_config"))
    deadline = time.monotonic() + 60
    while not os.path.exists("/run/libvirt/libvirt-sock") and time.monotonic() < deadline:
        time.sleep(0.1)
    net = workdir / "network.xml"
    net.write_text(NETWORK_XML)
    run("virsh", "-q", "-c", "qemu:///system", "net-create", str(net))
    _record(workdir)


def _record(workdir: Path, root: str = "") -> None:
    """Its daemons' pids (from pid files in its own /run) and its mount namespace."""
    found = {"mnt": os.readlink("/proc/self/ns/mnt")} if not root else \
        {"mnt": json.loads((workdir / "pids.json").read_text())["mnt"]}
    for name in ("libvirtd", "virtlogd", "sshd"):
        found[name] = int(Path(f"{root}/run/{name}.pid").read_text().split()[0])
    (workdir / "pids.json").write_text(json.dumps(found))


if __name__ == "__main__" and sys.argv[1:2] == ["inside"]:
    _inside(Path(sys.argv[2]))
