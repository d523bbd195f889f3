#!/bin/sh
# A notify script for leader-notify.sh: the virtual IP follows the leader, as with keepalived.
#
#   VIP=10.0.0.100/32 DEV=eth0 leader-notify.sh move-vip.sh
#
# MASTER: the address is added to DEV (replace: idempotent) and announced with gratuitous ARP
# where arping is installed; BACKUP or NONE: it is removed. Needs CAP_NET_ADMIN.
set -eu
: "${VIP:?e.g. 10.0.0.100/32}" "${DEV:?e.g. eth0}"
state=$1
case "$state" in
    MASTER)
        ip addr replace "$VIP" dev "$DEV"
        if command -v arping >/dev/null 2>&1; then
            arping -q -U -c 1 -I "$DEV" "${VIP%/*}" || true
        fi
        ;;
    *)
        if ip -o addr show dev "$DEV" | grep -q " ${VIP%/*}/"; then
            ip addr del "$VIP" dev "$DEV"
        fi
        ;;
esac
