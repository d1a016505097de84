#!/bin/sh
# dracut initqueue/finished hook added by vlab (dracut --include): dracut's nfs module waits
# for $NEWROOT/proc before it goes on (parse-nfsroot.sh), so an NFS root that mounted but is
# not a root filesystem (a folder of one, say) keeps dracut looping, silent, until rd.retry
# runs out. Say so once, at once. Always true: it never holds dracut back.
if [ ! -e /tmp/vlab-root-said ] && [ -n "$NEWROOT" ] && [ ! -e "$NEWROOT/proc" ] \
    && [ ! -e "$NEWROOT/sbin/init" ] && [ ! -L "$NEWROOT/sbin/init" ]; then
    while read -r vlab_dev vlab_mnt vlab_type vlab_rest; do
        if [ "$vlab_mnt" = "$NEWROOT" ]; then
            case "$vlab_type" in
                nfs|nfs4)
                    : > /tmp/vlab-root-said
                    echo "VLAB-FAIL init-failed: no /sbin/init in $vlab_dev (and no /proc: not a root filesystem)" > /dev/console
                    ;;
            esac
        fi
    done < /proc/mounts
fi
true
