#!/usr/bin/env bash
# A ~10 second tour of etcd-await-election:
#
#   1. start a throwaway single-node etcd on 127.0.0.1 (ports from scripts/ports.sh, temp data dir)
#   2. start two candidates, `alice` and `bob`, for the election `demo`; each
#      wraps a shell loop that prints who is leading
#   3. show both status endpoints and `etcdctl elect -l demo`
#   4. SIGTERM the leader's wrapper and watch the other one take over
#   5. stop everything and remove the temp dir (also on Ctrl-C / errors)
#
# Usage: scripts/demo.sh        (or `make demo`, which builds first)
# Env:   BIN=path/to/etcd-await-election  (default: debug/etcd-await-election in
#                                         scripts/target-dir.sh's directory)
#        RUST_LOG=info                    (wrapper log level)
# Needs: etcd, etcdctl (scripts/install-deps.sh), python3; curl is optional.
set -euo pipefail

# A BIN given by the caller is relative to the caller's directory.
if [ -n "${BIN:-}" ] && [ "${BIN#/}" = "$BIN" ] && [[ "$BIN" == */* ]]; then
    BIN="$PWD/$BIN"
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/etcd.sh
source scripts/etcd.sh
BIN="${BIN:-$(scripts/target-dir.sh)/debug/etcd-await-election}"
export RUST_LOG="${RUST_LOG:-info}"
export ETCDCTL_API=3

say() { printf '\n==> %s\n' "$*"; }
die() { printf '==> ERROR: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ preflight
[ -x "$BIN" ] || die "$BIN not found; build it first (cargo build, or run 'make demo')"
for tool in etcd etcdctl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found; run scripts/install-deps.sh"
done
# Don't let the caller's environment (TLS files, force-acquire, ...) leak into
# the demo's candidates.
while read -r var; do
    unset "$var"
done < <(compgen -e | grep '^ETCD_AWAIT_ELECTION_' || true)

# ------------------------------------------------- cleanup: always, on any exit
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/eae-demo.XXXXXX")"
CANDIDATE_PIDS=() # wrapper processes we started
ETCD_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Wrappers first (SIGTERM: they stop their command and resign while etcd
    # is still up), then etcd.
    stop_pids 5 "${CANDIDATE_PIDS[@]}"
    if [ -n "$ETCD_PID" ]; then
        stop_pids 5 "$ETCD_PID"
    fi
    wait 2>/dev/null || true
    rm -rf "$WORKDIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------- helpers
# GET a status endpoint; prints the JSON body (or nothing if unreachable).
get_status() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 1 "http://$1/" 2>/dev/null || true
    else
        python3 -c 'import sys, urllib.request
try:
    print(urllib.request.urlopen("http://" + sys.argv[1] + "/", timeout=1).read().decode())
except Exception:
    pass' "$1"
    fi
}

# json_field JSON FIELD: print one top-level field of a JSON object (or "").
json_field() {
    python3 -c 'import json, sys
try:
    print(json.loads(sys.argv[1]).get(sys.argv[2], ""))
except Exception:
    print("")' "$1" "$2"
}

# wait_phase ADDR PHASE TIMEOUT_S START_NS: poll a status endpoint until its
# phase is PHASE. Prints the milliseconds from START_NS (wall clock) to the
# phase change as the wrapper stamped it (`since`), so the figure leaves out
# this poller's own start-up and polling.
wait_phase() {
    python3 - "$@" <<'PY'
import json, sys, time, urllib.request
from datetime import datetime, timezone
addr, phase, timeout, start = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        status = json.loads(urllib.request.urlopen("http://%s/" % addr, timeout=0.5).read())
        if status.get("phase") == phase:
            since = datetime.strptime(status["since"], "%Y-%m-%dT%H:%M:%S.%fZ")
            since_ns = since.replace(tzinfo=timezone.utc).timestamp() * 1e9
            print("%.0f" % ((since_ns - start) / 1e6))
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.01)
sys.exit(1)
PY
}

show_status() {
    local name addr body
    for name in alice bob; do
        addr="${STATUS[$name]}"
        body="$(get_status "$addr")"
        printf '    %-5s http://%s/  %s\n' "$name" "$addr" "${body:-(not reachable)}"
    done
}

show_elect() {
    # `elect -l` keeps listening for changes: give it a moment, then stop it.
    timeout 1 etcdctl --endpoints "$ENDPOINT" elect -l demo 2>/dev/null |
        sed 's/^/    /' || true
}

# ---------------------------------------------------------------------- etcd
take_ports CLIENT_PORT PEER_PORT ALICE_PORT BOB_PORT
ENDPOINT="127.0.0.1:$CLIENT_PORT"
declare -A STATUS=([alice]="127.0.0.1:$ALICE_PORT" [bob]="127.0.0.1:$BOB_PORT")

say "Starting a throwaway etcd on $ENDPOINT (data dir $WORKDIR/etcd, log $WORKDIR/etcd.log)"
start_etcd demo "$WORKDIR" "$CLIENT_PORT" "$PEER_PORT"
say "etcd is healthy"

# ---------------------------------------------------------------- candidates
# The wrapped command. The wrapper passes its environment through (so
# ETCD_AWAIT_ELECTION_IDENTITY is visible) and adds
# ETCD_AWAIT_ELECTION_LEADER_KEY / _LEADER_REVISION. The `kill -0 $PPID` guard
# only makes the loop end on its own if its wrapper were ever SIGKILLed.
# shellcheck disable=SC2016 # expanded by the child shell, not here
LOOP='while kill -0 $PPID 2>/dev/null; do
  echo "$ETCD_AWAIT_ELECTION_IDENTITY is leading (key $ETCD_AWAIT_ELECTION_LEADER_KEY, revision $ETCD_AWAIT_ELECTION_LEADER_REVISION)"
  sleep 1
done'

declare -A WRAPPER_PID
start_candidate() { # start_candidate NAME
    local name="$1"
    # Each candidate's stdout+stderr is prefixed with its name (the prefixer
    # ignores Ctrl-C so the wrappers' shutdown logs still show up).
    ETCD_AWAIT_ELECTION_LOCK_NAME=demo \
    ETCD_AWAIT_ELECTION_IDENTITY="$name" \
    ETCD_AWAIT_ELECTION_ENDPOINTS="$ENDPOINT" \
    ETCD_AWAIT_ELECTION_LEASE_DURATION=3 \
    ETCD_AWAIT_ELECTION_RENEW_DEADLINE=2s \
    ETCD_AWAIT_ELECTION_RETRY_PERIOD=500ms \
    ETCD_AWAIT_ELECTION_STATUS_ENDPOINT="${STATUS[$name]}" \
        "$BIN" sh -c "$LOOP" \
        > >(trap '' INT; exec sed -u "s/^/[$name] /") 2>&1 &
    WRAPPER_PID[$name]=$!
    CANDIDATE_PIDS+=("$!")
}

say "Starting candidate alice (status on ${STATUS[alice]})"
t0="$(date +%s%N)"
start_candidate alice
if ! ms="$(wait_phase "${STATUS[alice]}" running 10 "$t0")"; then
    die "alice did not become leader within 10 s"
fi
say "alice is leading ($ms ms after start)"

say "Starting candidate bob (status on ${STATUS[bob]}); alice already leads, so bob waits"
start_candidate bob
wait_phase "${STATUS[bob]}" awaiting 5 "$(date +%s%N)" >/dev/null || die "bob's status endpoint did not come up"
sleep 2

say "Status endpoints:"
show_status

say "etcdctl elect -l demo (current leader's key and identity):"
show_elect

# ------------------------------------------------------------------ failover
LEADER=""
for name in alice bob; do
    if [ "$(json_field "$(get_status "${STATUS[$name]}")" phase)" = running ]; then
        LEADER="$name"
    fi
done
[ -n "$LEADER" ] || die "no candidate reports phase=running"
if [ "$LEADER" = alice ]; then OTHER=bob; else OTHER=alice; fi

say "Sending SIGTERM to the leader's wrapper ($LEADER, pid ${WRAPPER_PID[$LEADER]}): it stops its command and resigns"
t0="$(date +%s%N)"
kill -TERM "${WRAPPER_PID[$LEADER]}"
if ! ms="$(wait_phase "${STATUS[$OTHER]}" running 10 "$t0")"; then
    die "$OTHER did not take over within 10 s"
fi
say "$OTHER took over $ms ms after the SIGTERM"

rc=0
wait "${WRAPPER_PID[$LEADER]}" || rc=$?
CANDIDATE_PIDS=("${WRAPPER_PID[$OTHER]}") # the old leader is reaped: forget its pid
say "$LEADER's wrapper exited with status $rc"
sleep 2

say "Status endpoints ($LEADER's is gone):"
show_status
say "etcdctl elect -l demo:"
show_elect

say "Stopping $OTHER and etcd, removing $WORKDIR"
# (cleanup trap does the rest)
