# shellcheck shell=bash
# Listening ports for the scripts' throwaway servers (sourced, not run), by the
# machine-wide protocol that tests/common/ports.rs documents and follows too:
# ports from outside the kernel's ephemeral range (net.ipv4.ip_local_port_range:
# [max(1024, low/2), low), else (high, 65535]), so no outgoing connection can
# take one as its source port before the server binds it; each handed out
# under an exclusive flock on /tmp/etcd-await-election-ports/PORT and bound
# once first (which skips ports something else listens on).
#
# The lock is held by an fd of the calling shell, inherited by the servers it
# starts: a port stays reserved until the script and everything it started
# have exited, and is released by the kernel even after a SIGKILL.
# Needs flock (util-linux) and python3.

PORT_LOCK_DIR=/tmp/etcd-await-election-ports

# port_range: print "FROM TO" (TO exclusive).
port_range() {
    local low=32768 high=60999 min=1024 from
    read -r low high </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    from=$((low / 2 > 1024 ? low / 2 : 1024))
    if [ $((low - from)) -ge "$min" ]; then
        echo "$from $low"
    elif [ $((65536 - high - 1)) -ge "$min" ]; then
        echo "$((high + 1)) 65536"
    else
        echo "ip_local_port_range is '$low $high': no $min ports outside it for test" \
            "listeners; narrow it (sysctl -w net.ipv4.ip_local_port_range='32768 60999')" >&2
        return 1
    fi
}

# take_ports VAR...: set each VAR to a distinct port reserved for this shell.
# Must run in the calling shell itself (not in $(...) or <(...)): a subshell's
# locks would be released when it exits.
take_ports() {
    local from to span start i port fd var
    read -r from to < <(port_range) && [ -n "${to:-}" ] || return 1
    mkdir -p "$PORT_LOCK_DIR"
    chmod 1777 "$PORT_LOCK_DIR" 2>/dev/null || true
    span=$((to - from))
    start=$(((RANDOM * 32768 + RANDOM) % span))
    for var in "$@"; do
        for ((i = 0; i < span; i++)); do
            port=$((from + (start + i) % span))
            # Read-only is enough to lock, and all we get on another user's lock file.
            # (The groups keep 2>/dev/null from becoming permanent, as exec would make it.)
            { exec {fd}<>"$PORT_LOCK_DIR/$port"; } 2>/dev/null ||
                { exec {fd}<"$PORT_LOCK_DIR/$port"; } 2>/dev/null || continue
            if flock -n "$fd" && port_bindable "$port"; then
                printf -v "$var" '%s' "$port"
                start=$(((start + i + 1) % span))
                continue 2
            fi
            exec {fd}>&-
        done
        echo "take_ports: no port in $from..$to is free (all locked under $PORT_LOCK_DIR or bound)" >&2
        return 1
    done
}

# port_bindable PORT: true if a listener could bind 127.0.0.1:PORT now.
port_bindable() {
    python3 -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
