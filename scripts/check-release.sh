#!/usr/bin/env bash
# Checks the static musl release binary (run by `make release-check`, which
# builds it first with `make release`):
#
#   1. statically linked: no PT_INTERP program header, no DT_NEEDED entry
#      (readelf), and `file` says "statically linked" / "static-pie linked"
#   2. size within the budget (SIZE_BUDGET bytes, default 3 MiB = 3145728)
#   3. runs in an empty root (a temp dir holding nothing but the binary, no
#      /etc, /proc, /dev, no libc), entered with chroot (root) or
#      `unshare --map-root-user --root` (unprivileged):
#        - `/etcd-await-election --version` prints the version and commit
#        - `/etcd-await-election /etcd-await-election --version` (no election
#          variables: plain exec of the command) prints it too
#        - a real election against a throwaway etcd on 127.0.0.1 (the empty
#          root shares the network namespace): the wrapper becomes leader,
#          runs `/etcd-await-election --version`, exits 0 and leaves no key
#          under the lock name behind
#   4. on the host, a file without #! and an argument list as long as the
#      kernel takes: passed through, and as the leader's command (exit code,
#      every argument received, no key left)
#
# Usage: scripts/check-release.sh
# Env:   BIN=path/to/etcd-await-election
#            (default: x86_64-unknown-linux-musl/release/etcd-await-election in
#            scripts/target-dir.sh's directory)
#        SIZE_BUDGET=bytes (default 3145728)
#        ROOT_DIR=dir: run step 3 in this root (an unpacked image holding
#            /etcd-await-election) instead of a fresh one holding a copy of BIN
#        ROOT_USER=uid:gid: run as this user inside the root (chroot only)
#        EXPECTED_COMMIT: the commit --version must name (default: git HEAD)
# Needs: readelf (binutils), file, chroot or unshare (util-linux), etcd,
#        etcdctl, python3, flock (ports), timeout (coreutils), /bin/sh.
set -euo pipefail

# A BIN given by the caller is relative to the caller's directory.
if [ -n "${BIN:-}" ] && [ "${BIN#/}" = "$BIN" ]; then
    BIN="$PWD/$BIN"
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/etcd.sh
source scripts/etcd.sh
BIN="${BIN:-$(scripts/target-dir.sh)/x86_64-unknown-linux-musl/release/etcd-await-election}"
SIZE_BUDGET="${SIZE_BUDGET:-3145728}"
NAME=etcd-await-election
export ETCDCTL_API=3

say() { printf '==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
die() {
    printf '\n==> RELEASE CHECK FAILED: %s\n\n' "$*" >&2
    exit 1
}

# ------------------------------------------------------------------ preflight
[ -f "$BIN" ] || die "$BIN not found; build it with 'make release'"
[ -x "$BIN" ] || die "$BIN is not executable"
for tool in readelf file etcd etcdctl python3 timeout; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "'$tool' not found (scripts/install-deps.sh installs the build/test tools)"
done
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)"
[ -n "$VERSION" ] || die "cannot read the package version from Cargo.toml"
# The commit build.rs recorded: this checkout's HEAD (EXPECTED_COMMIT overrides).
COMMIT="${EXPECTED_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
EXPECTED_VERSION_LINE="$NAME $VERSION (commit $COMMIT)"

# ------------------------------------------------- cleanup: always, on any exit
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/eae-release-check.XXXXXX")"
ETCD_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$ETCD_PID" ]; then
        stop_pids 5 "$ETCD_PID"
        wait "$ETCD_PID" 2>/dev/null || true
    fi
    rm -rf "$WORKDIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "Checking $BIN (version $VERSION)"

# ---------------------------------------------------------- 1. static linking
say "1. static linking"
PHDRS="$(readelf -lW "$BIN")" || die "readelf -l failed on $BIN"
if grep -q 'INTERP' <<<"$PHDRS"; then
    grep -A1 'INTERP' <<<"$PHDRS" >&2
    die "$BIN has a PT_INTERP program header (needs a dynamic loader): not static"
fi
ok "no PT_INTERP program header (no dynamic loader requested)"
DYN="$(readelf -dW "$BIN")" || die "readelf -d failed on $BIN"
if grep -q '(NEEDED)' <<<"$DYN"; then
    grep '(NEEDED)' <<<"$DYN" >&2
    die "$BIN has DT_NEEDED entries (shared library dependencies): not static"
fi
ok "no DT_NEEDED entries (no shared libraries)"
FILE_OUT="$(file -b "$BIN")"
echo "    file: $FILE_OUT"
case "$FILE_OUT" in
    *"statically linked"* | *"static-pie linked"*) ok "file says static" ;;
    *) die "file(1) does not report a static binary: $FILE_OUT" ;;
esac

# --------------------------------------------------------------------- 2. size
say "2. size budget"
SIZE="$(stat -c %s "$BIN")"
printf '    size: %d bytes (%d KiB); budget %d bytes (%d KiB)\n' \
    "$SIZE" $((SIZE / 1024)) "$SIZE_BUDGET" $((SIZE_BUDGET / 1024))
[ "$SIZE" -le "$SIZE_BUDGET" ] ||
    die "$BIN is $SIZE bytes, over the budget of $SIZE_BUDGET bytes"
ok "within budget ($((SIZE_BUDGET - SIZE)) bytes to spare)"

# ------------------------------------------------------------ 3. empty root
say "3. running in an empty root"
if [ -n "${ROOT_DIR:-}" ]; then
    ROOT="$ROOT_DIR"
    [ -x "$ROOT/$NAME" ] || die "ROOT_DIR $ROOT has no executable /$NAME"
else
    ROOT="$WORKDIR/root"
    mkdir "$ROOT"
    cp "$BIN" "$ROOT/$NAME"
    chmod 0755 "$ROOT/$NAME"
fi

# chroot when root (exit 125 = chroot itself failed, e.g. no CAP_SYS_CHROOT in
# a container); otherwise an unprivileged user namespace entered at the root.
ROOT_CMD=(chroot "$ROOT")
if [ "$(id -u)" -eq 0 ]; then
    probe=0
    timeout 20 chroot "$ROOT" "/$NAME" --version >/dev/null 2>&1 || probe=$?
    if [ "$probe" -eq 125 ]; then
        say "   chroot failed (exit 125); trying unshare --map-root-user --root"
        ROOT_CMD=(unshare --map-root-user --root="$ROOT")
    elif [ -n "${ROOT_USER:-}" ]; then
        ROOT_CMD=(chroot --userspec="$ROOT_USER" "$ROOT")
    fi
else
    ROOT_CMD=(unshare --map-root-user --root="$ROOT")
fi
# Absolute path: env -i (below) clears PATH, and chroot lives in /usr/sbin.
ROOT_CMD[0]="$(command -v "${ROOT_CMD[0]}")" ||
    die "'${ROOT_CMD[0]}' not found (coreutils/util-linux); cannot enter an empty root"
ok "entering the empty root with: ${ROOT_CMD[*]}"
# in_root SECONDS [VAR=VALUE...] CMD...: run CMD inside the empty root with an
# empty environment plus the VAR=VALUE words, killed after SECONDS (exit 124).
in_root() {
    local limit="$1" envs=()
    shift
    while [ "$#" -gt 0 ] && [[ "$1" == *=* ]]; do
        envs+=("$1")
        shift
    done
    timeout "$limit" env -i "${envs[@]}" "${ROOT_CMD[@]}" "$@"
}
echo "    root contents: $(cd "$ROOT" && find . -mindepth 1 | tr '\n' ' ')"

# expect_version WHAT OUTPUT
expect_version() {
    [ "$(head -n 1 <<<"$2")" = "$EXPECTED_VERSION_LINE" ] ||
        die "$1: expected '$EXPECTED_VERSION_LINE', got: '$2'"
    ok "$1 -> $EXPECTED_VERSION_LINE"
}

rc=0
out="$(in_root 20 "/$NAME" --version 2>&1)" || rc=$?
[ "$rc" -eq 0 ] || die "/$NAME --version failed in the empty root (${ROOT_CMD[0]}," \
    "exit $rc): $out"
expect_version "/$NAME --version" "$out"

rc=0
out="$(in_root 20 "/$NAME" "/$NAME" --version 2>&1)" || rc=$?
[ "$rc" -eq 0 ] || die "passthrough /$NAME /$NAME --version failed in the empty root" \
    "(exit $rc): $out"
expect_version "/$NAME /$NAME --version (passthrough exec)" "$out"

# A throwaway single-node etcd on loopback ports reserved by scripts/ports.sh.
take_ports CLIENT_PORT PEER_PORT
ENDPOINT="127.0.0.1:$CLIENT_PORT"
say "   starting a throwaway etcd on $ENDPOINT"
start_etcd release-check "$WORKDIR" "$CLIENT_PORT" "$PEER_PORT"
ok "etcd is healthy"

LOCK="release-check-$$"
rc=0
in_root 60 \
    ETCD_AWAIT_ELECTION_LOCK_NAME="$LOCK" \
    ETCD_AWAIT_ELECTION_IDENTITY=release-check \
    ETCD_AWAIT_ELECTION_ENDPOINTS="$ENDPOINT" \
    ETCD_AWAIT_ELECTION_LOG_LEVEL=info \
    "/$NAME" "/$NAME" --version \
    >"$WORKDIR/election.out" 2>"$WORKDIR/election.err" || rc=$?
sed 's/^/    wrapper stderr: /' "$WORKDIR/election.err"
sed 's/^/    wrapper stdout: /' "$WORKDIR/election.out"
[ "$rc" -ne 124 ] || die "the election run in the empty root timed out after 60 s"
[ "$rc" -eq 0 ] || die "the election run in the empty root exited $rc, expected 0"
grep -q 'leading' "$WORKDIR/election.err" ||
    die "the wrapper never logged that it was leading"
expect_version "election run: leader ran /$NAME --version" "$(cat "$WORKDIR/election.out")"

keys="$(etcdctl --endpoints "$ENDPOINT" --command-timeout 5s get --prefix --keys-only "$LOCK")" ||
    die "etcdctl get --prefix $LOCK failed"
if [ -n "${keys//[[:space:]]/}" ]; then
    printf '    left behind: %s\n' "$keys" >&2
    die "keys under the lock name '$LOCK' remain in etcd after the wrapper exited"
fi
ok "no keys left under '$LOCK' (etcdctl get --prefix is empty)"

# ------------------------------------------------ 4. the longest argument list
# On the host (the empty root has no /bin/sh): a file without #! is run by /bin/sh, as a shell
# does (musl's execvp does not), with an argument list as long as the kernel takes (one argument
# of 128 KiB, then one-letter ones up to ARG_MAX, less a little for the environment), passed
# through and as the leader's command; the wrapper exits with the script's code and leaves no key.
say "4. the longest argument list, for a file without #! (on the host)"
SCRIPT="$WORKDIR/no-shebang"
# shellcheck disable=SC2016 # expanded by the script, not here
printf '%s\n' 'printf "%s %s\n" "$#" "${#1}"' 'exit 3' >"$SCRIPT"
chmod 0755 "$SCRIPT"
# Each argument costs its bytes, its NUL and its pointer, and so does each variable of this
# script's environment (the first exec, of env, has it all); 16 KiB are left for file names.
readarray -t ARGS < <(python3 -c '
import os
arg_max = min(max(os.sysconf("SC_ARG_MAX"), 128 << 10), 6 << 20)
env = sum(len(k) + len(v) + 2 + 8 for k, v in os.environb.items())
print("x" * ((128 << 10) - 1))
for _ in range((arg_max - env - (16 << 10) - (128 << 10) - 8) // 10):
    print("a")')
EXPECTED="${#ARGS[@]} $(((128 << 10) - 1))"
say "   ${#ARGS[@]} arguments, $(getconf ARG_MAX) bytes allowed"
# long_argv WHAT VAR=VALUE...: run the script with ARGS under the wrapper, in an environment of
# PATH and the VAR=VALUE words alone.
long_argv() {
    local what="$1" rc=0
    shift
    env -i PATH=/usr/bin:/bin "$@" timeout 60 "$BIN" "$SCRIPT" "${ARGS[@]}" \
        >"$WORKDIR/long.out" 2>"$WORKDIR/long.err" || rc=$?
    sed 's/^/    wrapper stderr: /' "$WORKDIR/long.err"
    [ "$rc" -eq 3 ] || die "$what: the wrapper exited $rc, expected the script's 3"
    [ "$(cat "$WORKDIR/long.out")" = "$EXPECTED" ] ||
        die "$what: the script saw '$(cat "$WORKDIR/long.out")', expected '$EXPECTED'" \
            "(argument count, length of the first)"
    ok "$what: the script ran with every argument, exit 3"
}
long_argv "passthrough"
LOCK="release-check-argv-$$"
long_argv "election" \
    ETCD_AWAIT_ELECTION_LOCK_NAME="$LOCK" \
    ETCD_AWAIT_ELECTION_IDENTITY=release-check \
    ETCD_AWAIT_ELECTION_ENDPOINTS="$ENDPOINT"
keys="$(etcdctl --endpoints "$ENDPOINT" --command-timeout 5s get --prefix --keys-only "$LOCK")" ||
    die "etcdctl get --prefix $LOCK failed"
[ -z "${keys//[[:space:]]/}" ] || die "keys under '$LOCK' remain in etcd: $keys"
ok "no keys left under '$LOCK'"

say "release check passed: $BIN ($SIZE bytes, static, runs in an empty root)"
