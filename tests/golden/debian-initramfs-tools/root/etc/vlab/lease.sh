#!/bin/sh
# udhcpc event script of vlab's busybox terminal: it only says what happened to the lease.
# The address stays as the initrd set it, even when the lease is lost: the NFS root is
# mounted through it (as systemd-networkd's KeepConfiguration= keeps an NFS root's).
case "$1" in
    bound|renew)
        echo "vlab-terminal: DHCP lease of $ip $1 for ${lease:-?} s (from ${serverid:-?})" ;;
    deconfig|leasefail|nak)
        echo "vlab-terminal: DHCP $1 on $interface: its address stays (the NFS root is on it)" ;;
esac
exit 0
