#!/usr/bin/env bash
# Install what vlab needs on Debian 12, as root. Idempotent: a second run changes nothing.
set -euo pipefail

PACKAGES=(
  busybox-static cpio kmod iproute2 iptables dropbear-bin
  qemu-system-x86 ipxe-qemu
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients dnsmasq-base
  # -system alone pulls systemd-sysv, which replaces init: take the sysv flavour with it.
  libvirt-daemon-system libvirt-daemon-system-sysv
  # the isolated libvirtd runs under tini, a subreaper that reaps its QEMUs at once
  tini
  # an image's initrd builder runs unprivileged in bubblewrap, under a seccomp filter
  bubblewrap libseccomp2
  nfs-ganesha nfs-ganesha-vfs rpcbind
  # Debian roots, disk images (qcow2 through qemu-img; the tests make partitioned ones with
  # sfdisk, mkfs.ext4 -d and mkfs.vfat), PXE bootloaders
  mmdebstrap e2fsprogs util-linux mount fdisk dosfstools mtools qemu-utils pxelinux syslinux-common
  # UEFI PXE hosts: Debian's signed shim and network GRUB; OVMF for their twins
  shim-signed grub-efi-amd64-signed ovmf
  # HTTP boot and iPXE: the twins' lab serves the tree with lighttpd; iPXE's loaders
  lighttpd ipxe
  # arm64 terminals and twins: qemu-system-aarch64 and AAVMF (arm64 UEFI)
  qemu-system-arm qemu-efi-aarch64
  # the tests check the ISC dhcpd snippets with dhcpd -t (its service kept from starting)
  isc-dhcp-server
  # to build libvirt-python from its sdist, in a virtualenv
  libvirt-dev pkg-config gcc python3-dev python3-venv
  # the sandbox tests compile a hostile static builder
  libc6-dev
  # the tests' second hypervisor host runs an sshd inside namespaces of its own
  openssh-server openssh-client
  # the tests open the boot report in a real headless browser (screenshot, DOM)
  chromium
)

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $EUID -ne 0 ]]; then
    echo "install-deps: missing Debian packages: ${missing[*]}; run as root" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  apt-get update -qq
  # Without systemd, a package's init script would start its daemon (openssh-server's sshd
  # on every address of the machine): policy-rc.d says no while apt runs.
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    trap '[[ -n $made_policy ]] && rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# vlab fetches the guest kernel with apt-get download: apt must know the package. arm64
# terminals' kernel, busybox, shim and GRUB are Debian's arm64 packages, downloaded the same
# way (never installed): apt knows them once dpkg knows the architecture.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "install-deps: dpkg --add-architecture arm64 (apt then fetches arm64 packages' lists)" >&2
  dpkg --add-architecture arm64
fi
policy=$(apt-cache policy linux-image-amd64 linux-image-arm64:arm64 2>/dev/null || true)
if [[ $(grep -c "Candidate: [0-9]" <<<"$policy") -lt 2 ]]; then
  echo "install-deps: apt-get update (apt knows no linux-image-amd64 or linux-image-arm64 yet)" >&2
  apt-get update -qq
fi

# The packaged 'default' NAT network autostarts with every libvirtd: vlab never uses it.
rm -f /etc/libvirt/qemu/networks/autostart/default.xml
