# shellcheck shell=bash
# A throwaway single-member etcd on loopback, for scripts/demo.sh and
# scripts/check-release.sh (sourced, not run). The caller defines die() and,
# in its exit trap, stops "$ETCD_PID" with stop_pids and removes its data dir.
# Ports: take_ports (scripts/ports.sh, sourced here).

# shellcheck source=scripts/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/ports.sh"

# start_etcd NAME DIR CLIENT_PORT PEER_PORT: start etcd with its data dir and
# log (etcd.log) under DIR, set ETCD_PID, and wait until it is healthy.
# etcd runs in its own process group, so a Ctrl-C in the terminal doesn't kill
# it before the candidates have resigned; the caller stops it last.
# (python3 does setpgid + exec, so $! is etcd's own pid.)
start_etcd() {
    local name="$1" dir="$2" endpoint="127.0.0.1:$3" peer="http://127.0.0.1:$4" i
    python3 -c 'import os, sys; os.setpgid(0, 0); os.execvp(sys.argv[1], sys.argv[1:])' \
        etcd --name "$name" \
        --data-dir "$dir/etcd" \
        --listen-client-urls "http://$endpoint" \
        --advertise-client-urls "http://$endpoint" \
        --listen-peer-urls "$peer" \
        --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$name=$peer" \
        --heartbeat-interval 100 --election-timeout 1000 \
        >"$dir/etcd.log" 2>&1 &
    ETCD_PID=$!
    for i in $(seq 1 150); do
        if etcdctl --endpoints "$endpoint" --command-timeout 1s endpoint health >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$ETCD_PID" 2>/dev/null || [ "$i" -eq 150 ]; then
            tail -n 20 "$dir/etcd.log" >&2 || true
            die "the throwaway etcd did not become healthy on $endpoint"
        fi
        sleep 0.1
    done
}

# stop_pids TIMEOUT_S PID...: SIGTERM, wait up to TIMEOUT_S, then SIGKILL.
stop_pids() {
    local timeout="$1" pid i alive
    shift
    [ "$#" -gt 0 ] || return 0
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = 0; i < timeout * 10; i++)); do
        alive=0
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        [ "$alive" -eq 0 ] && return 0
        sleep 0.1
    done
    for pid in "$@"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}
