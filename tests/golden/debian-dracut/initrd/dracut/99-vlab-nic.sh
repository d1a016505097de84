#!/bin/sh
# dracut initqueue/settled job added by vlab (dracut --include): once udev has settled, say
# at once if no network interface can appear (dracut would loop until rd.retry runs out).
# Sourced by the initqueue on each pass; it runs once.
# Named at once when no NIC appears: with udev settled (the coldplugged drivers loaded) and
# no network interface that has a device behind it, the builder itself would wait in silence
# (initramfs-tools 180 s for "any network device", dracut its whole rd.retry).
vlab_nic_check() {
    udevadm settle --timeout=30 2>/dev/null
    vlab_try=0
    while [ "$vlab_try" -lt 10 ]; do
        for vlab_dev in /sys/class/net/*; do
            [ -e "$vlab_dev/device" ] && return 0
        done
        vlab_try=$((vlab_try + 1))
        sleep 1
    done
    echo "VLAB-FAIL nic-driver-missing: no network interface appeared (udev settled: the initrd has no driver for the NIC, or it was not loaded)"
    return 1
}

rm -f -- "$job"
vlab_nic_check > /dev/console
