#!/bin/sh
# udhcpc event script for vlab's initrd (Debian's busybox has no default script path).
case "$1" in
    deconfig)
        ip addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        if [ -n "$router" ]; then
            ip route add default via "${router%% *}" dev "$interface"
        fi
        [ -n "$hostname" ] && hostname "$hostname"
        mkdir -p /run
        echo "${rootpath:-}" > /run/vlab-dhcp-rootpath
        echo "${serverid:-}" > /run/vlab-dhcp-server
        [ "${siaddr:-0.0.0.0}" = 0.0.0.0 ] || echo "$siaddr" > /run/vlab-dhcp-next-server
        echo "vlab-initrd: $interface is $ip/${mask:-24} (lease from ${serverid:-?})"
        ;;
esac
exit 0
