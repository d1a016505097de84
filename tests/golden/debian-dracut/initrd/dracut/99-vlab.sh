#!/bin/sh
# dracut pre-pivot hook added by vlab (dracut --include, the image is not touched): the proof
# of the NFS root, and tmpfs where a stateless client must write, before the switch to $NEWROOT.
# Print the proof of the NFS root: the mount as this guest's /proc/mounts shows it.
# (Plain sh and read: klibc's and dracut's shells have no awk.)
vlab_proof() {
    vlab_line=
    while read -r vlab_dev vlab_mnt vlab_fs vlab_opts vlab_rest; do
        if [ "$vlab_mnt" = "$1" ]; then
            case "$vlab_fs" in nfs*) vlab_line="$vlab_dev $vlab_fs $vlab_opts" ;; esac
        fi
    done < /proc/mounts
    if [ -n "$vlab_line" ]; then
        # The NFSv4 client id as the kernel builds it: its uniquifier (set in sysfs, or the
        # nfs module's parameter, which the kernel uses when sysfs has none), the host name.
        vlab_id=
        read -r vlab_id 2>/dev/null < /sys/fs/nfs/net/nfs_client/identifier
        case "$vlab_id" in  # unset, the file reads "(null)"
            ""|"(null)") read -r vlab_id 2>/dev/null < /sys/module/nfs/parameters/nfs4_unique_id ;;
        esac
        read -r vlab_node < /proc/sys/kernel/hostname
        set -- $vlab_line
        case "$1" in  # an IPv6 server is bracketed: [fd00::2]:/path
            \[*) vlab_server=${1%%\]:*}; vlab_server=${vlab_server#\[}; vlab_export=${1#*\]:} ;;
            *) vlab_server=${1%%:*}; vlab_export=${1#*:} ;;
        esac
        echo "VLAB-NFSROOT-OK server=$vlab_server export=$vlab_export fstype=$2 options=$3 client=${vlab_id:+$vlab_id/}$vlab_node"
    else
        echo "VLAB-FAIL init-failed: no NFS mount on $1"
    fi
}

# Give a read-only NFS root somewhere to write: tmpfs over the usual volatile paths.
# Symlinks (var/run -> /run) are left alone: they point into a tmpfs already.
vlab_writable_tmpfs() {
    vlab_done=
    for vlab_dir in tmp var/tmp var/lock var/run var/log var/lib/dhcp; do
        if [ -d "$1/$vlab_dir" ] && [ ! -L "$1/$vlab_dir" ]; then
            mount -t tmpfs -o mode=1777,size=25% tmpfs "$1/$vlab_dir" \
                && vlab_done="$vlab_done /$vlab_dir"
        fi
    done
    echo "vlab: writable tmpfs on:$vlab_done"
}

# A runtime unit (in /run, gone at the next boot; the root is not touched) that tells the
# console when a systemd root reaches multi-user.target: systemd itself stops printing its
# status once a getty owns the serial console, which today's Debian starts first.
vlab_ready_unit() {
    mkdir -p "$1/systemd/system/multi-user.target.wants"
    cat > "$1/systemd/system/vlab-ready.service" <<'UNIT'
[Unit]
Description=vlab: say on the console that the terminal is up
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh /run/vlab-ready.sh
UNIT
    # The line names the units that failed on the way (systemctl --failed), or "failed=".
    cat > "$1/vlab-ready.sh" <<'SCRIPT'
failed=$(systemctl --failed --plain --no-legend 2>/dev/null | while read -r unit rest; do
    case $unit in "●"|"*") unit=${rest%% *} ;; esac
    printf '%s,' "$unit"; done)
echo "VLAB-TERMINAL-UP $(cat /proc/sys/kernel/hostname) systemd multi-user.target failed=${failed%,}" > /dev/console
SCRIPT
    ln -sf ../vlab-ready.service "$1/systemd/system/multi-user.target.wants/vlab-ready.service"
    # Masked for this boot only (a /run mask, as systemctl mask --runtime makes): units with
    # nothing to do on a read-only NFS root. e2scrub_reap, scheduled idle, held
    # multi-user.target back for 20 s to a minute on today's bookworm under TCG.
    for vlab_unit in e2scrub_reap.service e2scrub_all.timer fstrim.timer; do
        ln -sf /dev/null "$1/systemd/system/$vlab_unit"
    done
}

vlab_writable=tmpfs
for word in $(cat /proc/cmdline); do
    case "$word" in vlab.writable=*) vlab_writable=${word#vlab.writable=} ;; esac
done
vlab_proof "$NEWROOT" > /dev/console
[ "$vlab_writable" = tmpfs ] && vlab_writable_tmpfs "$NEWROOT" > /dev/console
vlab_ready_unit /run  # dracut moves its /run into $NEWROOT
