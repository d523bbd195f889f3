#!/usr/bin/env bash
# Install the build/test dependencies of etcd-await-election on Debian/Ubuntu.
#
# Idempotent: when everything is present it only runs a handful of
# `command -v` / `rustup ... --installed` checks and exits (well under a
# second), never touching apt.
#
#   scripts/install-deps.sh            # test/build deps
#   scripts/install-deps.sh --bench    # also hyperfine (for `make bench`)
#   scripts/install-deps.sh --release  # musl target is mandatory (`make release`)
#   scripts/install-deps.sh --aarch64  # also the aarch64 cross toolchain
#
# Tools checked -> Debian package installed when missing:
#   etcd      -> etcd-server        (integration tests, demo)
#   etcdctl   -> etcd-client        (demo, debugging)
#   protoc    -> protobuf-compiler  (etcd-client build)
#   musl-gcc  -> musl-tools         (static musl release build; ring's C code)
#   readelf   -> binutils           (release check: static linking)
#   file      -> file               (release check)
#   systemd-analyze -> systemd      (examples check: verify the unit)
#   python3 + PyYAML -> python3-yaml (examples check: Kubernetes YAML)
#   hyperfine -> hyperfine          (--bench only)
#   aarch64-linux-gnu-gcc -> gcc-aarch64-linux-gnu, libc6-dev-arm64-cross,
#   qemu-aarch64-static   -> qemu-user-static   (--aarch64 only)
# plus rustup components rustfmt + clippy and the rustup target
# x86_64-unknown-linux-musl (and aarch64-unknown-linux-musl with --aarch64).
set -euo pipefail

MUSL_TARGET=x86_64-unknown-linux-musl
AARCH64_TARGET=aarch64-unknown-linux-musl
WANT_BENCH=0
NEED_MUSL_TARGET=0
WANT_AARCH64=0

usage() {
    sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
}

for arg in "$@"; do
    case "$arg" in
        --bench) WANT_BENCH=1 ;;
        --release) NEED_MUSL_TARGET=1 ;;
        --aarch64) WANT_AARCH64=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install-deps: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

export DEBIAN_FRONTEND=noninteractive

log() { echo "install-deps: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Root commands: run directly as root, via sudo otherwise (if available).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        # sudo resets the environment; pass DEBIAN_FRONTEND explicitly.
        sudo env DEBIAN_FRONTEND=noninteractive "$@"
    else
        die "need root to run '$*' (not root and sudo is not installed)"
    fi
}

# ---------------------------------------------------------------- apt packages
missing_pkgs=()
need_tool() { # need_tool TOOL PACKAGE
    if ! command -v "$1" >/dev/null 2>&1; then
        log "missing '$1' (package $2)"
        missing_pkgs+=("$2")
    fi
}
need_tool etcd etcd-server
need_tool etcdctl etcd-client
need_tool protoc protobuf-compiler
need_tool musl-gcc musl-tools
need_tool readelf binutils
need_tool file file
need_tool systemd-analyze systemd
# PyYAML for whichever python3 scripts/check-examples.sh finds: the one on
# PATH (may be a pyenv/venv one with PyYAML from pip) or Debian's.
have_pyyaml() {
    local py
    for py in python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import yaml' 2>/dev/null; then
            return 0
        fi
    done
    return 1
}
if ! have_pyyaml; then
    log "missing PyYAML for python3 (package python3-yaml)"
    missing_pkgs+=(python3-yaml)
fi
if [ "$WANT_BENCH" -eq 1 ]; then
    need_tool hyperfine hyperfine
fi
if [ "$WANT_AARCH64" -eq 1 ]; then
    need_tool aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
    # ring's C code includes <assert.h>/<stdint.h>: the cross C headers.
    if [ ! -f /usr/aarch64-linux-gnu/include/assert.h ]; then
        log "missing aarch64 C headers (package libc6-dev-arm64-cross)"
        missing_pkgs+=(libc6-dev-arm64-cross)
    fi
    need_tool qemu-aarch64-static qemu-user-static
fi

# PIDs of etcd processes run by the package's `etcd` system user.
# Scans /proc directly (procps/pgrep may not be installed on minimal images).
packaged_etcd_pids() {
    local uid dir comm
    uid="$(id -u etcd 2>/dev/null)" || return 0
    for dir in /proc/[0-9]*; do
        comm="$(cat "$dir/comm" 2>/dev/null)" || continue
        [ "$comm" = etcd ] || continue
        [ "$(stat -c %u "$dir" 2>/dev/null)" = "$uid" ] || continue
        is_alive "${dir#/proc/}" || continue
        echo "${dir#/proc/}"
    done
}

# True if PID exists and is not a zombie (zombies of a daemon whose parent is
# a non-reaping container init would otherwise look alive forever).
is_alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != Z ]
}

# Send a signal to PIDs as root (shell builtin kill: no procps needed).
kill_as_root() { # kill_as_root SIG PID...
    as_root sh -c 'kill "$@"' sh "$@"
}

# Debian's etcd-server postinst may start an etcd service on 127.0.0.1:2379
# (systemd unit or /etc/init.d/etcd, both running as user `etcd`). The tests
# and the demo start their own etcd on free ports, so stop the packaged one.
# Only called right after we installed etcd-server ourselves, and only
# touches etcd processes owned by user `etcd` that did not exist before the
# install (test etcds run as the invoking user and are never affected).
stop_packaged_etcd() {
    local before="$1" pid new=() stopped=0
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        if systemctl is-active --quiet etcd 2>/dev/null; then
            log "stopping and disabling the etcd.service started by the package"
            as_root systemctl stop etcd || true
            as_root systemctl disable etcd >/dev/null 2>&1 || true
            stopped=1
        fi
    fi
    for pid in $(packaged_etcd_pids); do
        case " $before " in *" $pid "*) ;; *) new+=("$pid") ;; esac
    done
    # init.d (no systemd): do NOT call `/etc/init.d/etcd stop` -- without a
    # pidfile its start-stop-daemon matches by executable and kills *every*
    # /usr/bin/etcd process, test etcds included. Kill the new package-owned
    # PIDs ourselves and just disable the boot-time start.
    if [ "${#new[@]}" -gt 0 ] && [ -x /etc/init.d/etcd ] &&
        command -v update-rc.d >/dev/null 2>&1; then
        as_root update-rc.d etcd disable >/dev/null 2>&1 || true
    fi
    local i remaining
    for i in 1 2 3 4 5 6 7 8 9 10; do
        remaining=()
        for pid in "${new[@]}"; do
            if is_alive "$pid"; then
                remaining+=("$pid")
            fi
        done
        [ "${#remaining[@]}" -eq 0 ] && break
        if [ "$i" -eq 1 ]; then
            log "killing packaged etcd process(es): ${remaining[*]}"
            kill_as_root -TERM "${remaining[@]}" 2>/dev/null || true
        elif [ "$i" -eq 10 ]; then
            kill_as_root -KILL "${remaining[@]}" 2>/dev/null || true
        fi
        sleep 0.5
    done
    if [ "${#new[@]}" -gt 0 ]; then
        # Remove the init.d pidfile if it points at a process we stopped.
        if [ -f /var/run/etcd.pid ]; then
            case " ${new[*]} " in
                *" $(cat /var/run/etcd.pid 2>/dev/null) "*) as_root rm -f /var/run/etcd.pid ;;
            esac
        fi
        stopped=1
    fi
    if [ "$stopped" -eq 1 ]; then
        log "packaged etcd service stopped"
    fi
}

if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found; please install manually: ${missing_pkgs[*]}"
    etcd_before=" $(packaged_etcd_pids | tr '\n' ' ') "
    log "installing: ${missing_pkgs[*]}"
    as_root apt-get update -q
    as_root apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}"
    case " ${missing_pkgs[*]} " in
        *" etcd-server "*) stop_packaged_etcd "$etcd_before" ;;
    esac
    for tool in etcd etcdctl protoc musl-gcc readelf file systemd-analyze; do
        command -v "$tool" >/dev/null 2>&1 || die "'$tool' still missing after install"
    done
    have_pyyaml || die "python3 still cannot import yaml after installing python3-yaml"
    if [ "$WANT_BENCH" -eq 1 ]; then
        command -v hyperfine >/dev/null 2>&1 || die "'hyperfine' still missing after install"
    fi
    if [ "$WANT_AARCH64" -eq 1 ]; then
        for tool in aarch64-linux-gnu-gcc qemu-aarch64-static; do
            command -v "$tool" >/dev/null 2>&1 || die "'$tool' still missing after install"
        done
    fi
fi

# ------------------------------------------------------------------ rustup bits
# rustup is per-user: never run it through sudo.
if command -v rustup >/dev/null 2>&1; then
    installed_components="$(rustup component list --installed 2>/dev/null || true)"
    missing_components=()
    for comp in rustfmt clippy; do
        if ! grep -q "^${comp}\(-\|$\)" <<<"$installed_components"; then
            missing_components+=("$comp")
        fi
    done
    if [ "${#missing_components[@]}" -gt 0 ]; then
        log "rustup component add ${missing_components[*]}"
        rustup component add "${missing_components[@]}"
    fi

    if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
        log "rustup target add $MUSL_TARGET"
        if ! rustup target add "$MUSL_TARGET"; then
            # Only `make release` needs the musl target; don't fail tests on it.
            if [ "$NEED_MUSL_TARGET" -eq 1 ]; then
                die "could not install rustup target $MUSL_TARGET"
            fi
            log "WARNING: could not install rustup target $MUSL_TARGET" \
                "(only needed for 'make release'); continuing"
        fi
    fi
    if [ "$WANT_AARCH64" -eq 1 ] &&
        ! rustup target list --installed 2>/dev/null | grep -qx "$AARCH64_TARGET"; then
        log "rustup target add $AARCH64_TARGET"
        rustup target add "$AARCH64_TARGET" || die "could not install rustup target $AARCH64_TARGET"
    fi
else
    for sub in fmt clippy; do
        cargo "$sub" --version >/dev/null 2>&1 ||
            die "rustup not found and 'cargo $sub' is unavailable; install it manually"
    done
    if [ "$NEED_MUSL_TARGET" -eq 1 ] || [ "$WANT_AARCH64" -eq 1 ]; then
        die "rustup not found; cannot install the musl target(s)"
    fi
    log "WARNING: rustup not found; cannot check target $MUSL_TARGET (needed only for 'make release')"
fi

exit 0
