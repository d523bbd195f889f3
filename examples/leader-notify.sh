#!/bin/sh
# A consumer of `etcd-await-election --leader --watch`: runs SCRIPT on every change of leader,
# as keepalived runs its notify scripts. Run it beside (not under) the candidate, with the same
# ETCD_AWAIT_ELECTION_* variables (LOCK_NAME, ENDPOINTS, TLS, user; IDENTITY is this host's):
#
#   leader-notify.sh SCRIPT [ARGS...]
#
# SCRIPT is run as `SCRIPT [ARGS...] STATE LEADER ADDRESS REVISION`, one run at a time, in the
# order of the changes: STATE is MASTER when IDENTITY leads, BACKUP when another candidate does,
# NONE when nobody does (LEADER, ADDRESS and REVISION are then empty, as ADDRESS is when the
# leader advertises none). examples/move-vip.sh moves a virtual IP with it.
#
# Identities and addresses are taken from the JSON line as they are: one holding `"` or `\`
# (which the line escapes) is not decoded here; use a JSON parser (jq) for those.
# SIGTERM/SIGINT end it (and etcd-await-election, which exits 0).
set -eu
[ "$#" -ge 1 ] || { echo "usage: $0 SCRIPT [ARGS...]" >&2; exit 64; }
: "${ETCD_AWAIT_ELECTION_IDENTITY:?set it to this host's candidate identity}"
me=$ETCD_AWAIT_ELECTION_IDENTITY

field() { # field NAME LINE: a string field's value (empty for null)
    printf '%s\n' "$2" | sed -n "s/.*\"$1\":\"\([^\"\\\\]*\)\".*/\1/p"
}

etcd-await-election --leader --watch | while IFS= read -r line; do
    leader=$(field leader "$line")
    address=$(field address "$line")
    revision=$(printf '%s\n' "$line" | sed -n 's/.*"revision":\([0-9][0-9]*\).*/\1/p')
    case "$line" in
        '{"leader":null'*) state=NONE ;;
        *) if [ "$leader" = "$me" ]; then state=MASTER; else state=BACKUP; fi ;;
    esac
    "$@" "$state" "$leader" "$address" "$revision" ||
        echo "leader-notify: $1 $state failed (exit $?)" >&2
done
