"""What each initrd reads to find its NFS root: the kernel command line words, DHCP's root
path (option 17) and the NFS mount options, per builder (vlab, initramfs-tools, dracut). Pure."""

from __future__ import annotations

from vlab.scenario.model import (
    Addresses,
    InitrdBuilder,
    NfsVersion,
    RootSource,
    RootVia,
    Scenario,
)

MOUNT_PORT_OFFSET = 1000  # NFSv3's MOUNT protocol listens this far above the NFS port
# Words vlab adds for speed, not for function: a quiet serial console boots faster under TCG.
TUNING_ARGS = ("quiet",)


def nfs_options(version: NfsVersion, port: int | None) -> str:
    """The mount options: a server on a port of its own (a lab with other hypervisor hosts)
    has every port given, so a terminal never needs rpcbind; a site's server, and a lab's in
    its own namespace (port None), listen on 2049 (NFSv3: mountd through rpcbind)."""
    options = f"vers={version.value}"
    if port is None:
        return options + (",nolock" if version is NfsVersion.V3 else "")
    options += f",port={port}"
    if version is NfsVersion.V3:
        options += f",mountport={port + MOUNT_PORT_OFFSET},mountproto=tcp,nolock"
    return options


def machines_nfs(scenario: Scenario, server: str, port: int | None) -> tuple[str, str]:
    """Server and mount options of PXE machines: [pxe] nfs_server (a real server), else the
    lab's own (port None: it listens on 2049, as a site's does)."""
    explicit = scenario.pxe.nfs_server
    if explicit:
        return str(explicit), nfs_options(scenario.lab.nfs_version, None)
    return server, nfs_options(scenario.lab.nfs_version, port)


def _scheme(version: NfsVersion) -> str:
    return "nfs" if version is NfsVersion.V3 else "nfs4"


def root_args(builder: InitrdBuilder, version: NfsVersion, server: str | None, path: str,
              options: str) -> list[str]:
    """The kernel command line words that tell each initrd where its NFS root is; with no
    server, the initrd takes the root path from DHCP (option 17)."""
    if server is None:
        return {
            InitrdBuilder.INITRAMFS_TOOLS: ["root=/dev/nfs", "ip=dhcp"],
            InitrdBuilder.DRACUT: ["root=dhcp", "ip=dhcp", "rd.neednet=1"],
            InitrdBuilder.VLAB: [],
        }[builder]
    if builder is InitrdBuilder.INITRAMFS_TOOLS:
        # klibc's nfsmount asks rpcbind for the ports and takes no mountport.
        return ["root=/dev/nfs", f"nfsroot={server}:{path},tcp,nfsvers=3", "ip=dhcp"]
    if builder is InitrdBuilder.DRACUT:
        return [f"root={_scheme(version)}:{server}:{path}:{options}", "ip=dhcp", "rd.neednet=1"]
    return [f"root={server}:{path}", f"rootflags={options}"]


def dhcp_root_path(builder: InitrdBuilder, version: NfsVersion, server: str, path: str,
                   options: str) -> str:
    """Option 17 as each initrd reads it (klibc's nfsmount asks rpcbind, so no options)."""
    if builder is InitrdBuilder.INITRAMFS_TOOLS:
        return f"{server}:{path}"
    return f"{_scheme(version)}:{server}:{path}:{options}"


def root_target(override: str | None, server: str, export: str) -> tuple[str, str]:
    """Server and path a terminal mounts: the page's root=[SERVER:]/path override, if any."""
    if not override:
        return server, export
    o_server, _, path = override.rpartition(":")
    return o_server or server, path


def root_path_by_dhcp(scenario: Scenario, override: str | None, server: str, export: str,
                      options: str) -> str | None:
    """Option 17 for one terminal or machine, when the lab hands the root out by DHCP."""
    if scenario.lab.root_via is not RootVia.DHCP:
        return None
    return dhcp_root_path(scenario.initrd.builder, scenario.lab.nfs_version,
                          *root_target(override, server, export), options)


def nfs_client_id(mac: str) -> str:
    """The NFSv4 client id a terminal gives its server, from its MAC.

    Without one the kernel names itself to the server by host name alone, and terminals whose
    DHCP answer names no host are all "(none)": the server takes them for one client that keeps
    rebooting, and one of them loses its mount (EIO)."""
    return "vlab-" + mac.replace(":", "")


def kernel_cmdline(scenario: Scenario, server: str | None, path: str, options: str,
                   consoles: list[str], extra: str, mac: str | None, ssh_key: str = "",
                   name: str = "") -> str:
    """The whole kernel command line of a terminal (or of a PXE machine; mac None: any one).
    With the lab's SSH public key, the root's init authorizes it (vlab.sshkey=). `name`: its
    host name, where no DHCPv4 answer gives one (an IPv6-only lab)."""
    root = scenario.root
    words = [*consoles, "selinux=0",
             *root_args(scenario.initrd.builder, scenario.lab.nfs_version, server, path, options)]
    if scenario.lab.addresses is Addresses.IPV6:
        # dracut's form: no DHCPv4, an address by SLAAC (and the host name, which DHCPv4
        # would give): ip=<client>:<peer>:<gateway>:<netmask>:<hostname>:<device>:auto6
        words.append(f"ip=::::{name}:eth0:auto6" if name else "ip=auto6")
    if mac:
        # kmod's modprobe (dracut, initramfs-tools) passes it to nfs.ko; vlab's initrd reads it.
        words.append(f"nfs.nfs4_unique_id={nfs_client_id(mac)}")
    words.append(f"vlab.writable={root.writable.value}")
    if root.source is RootSource.BUSYBOX:
        words.append(f"vlab.after={root.after_boot.value}")
        if scenario.lab.dhcp_lease is not None:
            words.append("vlab.renew=1")  # its init keeps a DHCP client renewing the lease
    else:
        words.append("systemd.show_status=1")  # its "Reached target" line is the ready line
    words += TUNING_ARGS
    if extra:
        words.append(extra)
    if ssh_key:
        words.append(f"vlab.sshkey={ssh_key}")
    return " ".join(words)
