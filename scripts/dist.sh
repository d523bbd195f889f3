#!/usr/bin/env bash
# Packs what a user downloads (run by `make dist`, which first builds and
# checks the three static release binaries) into dist/:
#
#   etcd-await-election-VERSION-x86_64-linux-musl.tar.gz
#   etcd-await-election-VERSION-aarch64-linux-musl.tar.gz
#   etcd-await-election-VERSION-armv7-linux-musleabihf.tar.gz
#       a directory of that name holding the binary and README.md
#   etcd-await-election-VERSION-x86_64-oci.tar, ...-aarch64-oci.tar,
#   ...-armv7-oci.tar
#       the OCI image of packaging/Containerfile (only the binary; platforms
#       linux/amd64, linux/arm64, linux/arm/v7), built and checked
#       (scripts/build-image.sh, scripts/check-image.sh) where buildah can
#       build images; `podman load -i FILE` loads one
#   SHA256SUMS
#       of all of the above, verified here with `sha256sum -c`
#
# Each binary must be static, stripped, of its architecture and within
# SIZE_BUDGET (default 3 MiB); the x86_64 one (and the others under
# qemu-aarch64-static and qemu-arm-static, when installed) must print this
# checkout's version and commit. Packing is deterministic: sorted entries,
# owner 0, mtimes of the commit, gzip without a timestamp.
#
# Usage: scripts/dist.sh X86_64_BIN AARCH64_BIN ARMV7_BIN
# Needs: file, tar, gzip, sha256sum; buildah for the images (optional).
set -euo pipefail

[ "$#" -eq 3 ] || { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
ARCHES=(x86_64 aarch64 armv7)
declare -A BIN=([x86_64]="$(realpath "$1")" [aarch64]="$(realpath "$2")" [armv7]="$(realpath "$3")")
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
die() {
    printf '\n==> DIST FAILED: %s\n\n' "$*" >&2
    exit 1
}

NAME=etcd-await-election
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)"
[ -n "$VERSION" ] || die "cannot read the package version from Cargo.toml"
COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
EPOCH="$(git log -1 --format=%ct 2>/dev/null || echo 0)"
VERSION_LINE="$NAME $VERSION (commit $COMMIT)"
SIZE_BUDGET="${SIZE_BUDGET:-3145728}"
declare -A FILE_ARCH=([x86_64]="x86-64" [aarch64]="ARM aarch64" [armv7]="ARM, EABI5")
# The user-mode emulator that runs each foreign binary, and the tarball's
# name: the triple's ABI part (armv7 is hard-float EABI).
declare -A QEMU=([x86_64]=qemu-x86_64-static [aarch64]=qemu-aarch64-static [armv7]=qemu-arm-static)
declare -A ABI=([x86_64]=musl [aarch64]=musl [armv7]=musleabihf)

WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/eae-dist.XXXXXX")"
trap 'rm -rf "$WORKDIR"' EXIT
rm -rf dist
mkdir dist

for arch in "${ARCHES[@]}"; do
    bin="${BIN[$arch]}"
    say "$arch: $bin"
    [ -x "$bin" ] || die "$bin is missing (make release / make release-aarch64 / make release-armv7 build it)"
    info="$(file -b "$bin")"
    echo "    file: $info"
    [[ "$info" == *"${FILE_ARCH[$arch]}"* ]] || die "$bin is not an $arch binary"
    [[ "$info" == *"statically linked"* || "$info" == *"static-pie linked"* ]] || die "$bin is not static"
    [[ "$info" == *", stripped"* ]] || die "$bin is not stripped"
    size="$(stat -c %s "$bin")"
    [ "$size" -le "$SIZE_BUDGET" ] || die "$bin is $size bytes, over the $SIZE_BUDGET budget"
    ok "static, stripped, $arch, $size bytes"
    runner=()
    if [ "$arch" != "$(uname -m)" ]; then
        if command -v "${QEMU[$arch]}" >/dev/null 2>&1; then
            runner=("${QEMU[$arch]}")
        else
            runner=(skip)
        fi
    fi
    if [ "${runner[*]}" = skip ]; then
        say "   not running the $arch binary (no ${QEMU[$arch]}: apt-get install qemu-user-static)"
    else
        out="$("${runner[@]}" "$bin" --version)" || die "$bin --version failed"
        [ "$out" = "$VERSION_LINE" ] || die "$bin --version says '$out', expected '$VERSION_LINE'"
        ok "--version: $out"
    fi

    dir="$NAME-$VERSION-$arch-linux-${ABI[$arch]}"
    mkdir "$WORKDIR/$dir"
    install -m 0755 "$bin" "$WORKDIR/$dir/$NAME"
    install -m 0644 README.md "$WORKDIR/$dir/README.md"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" \
        -C "$WORKDIR" -cf - "$dir" | gzip -n -9 >"dist/$dir.tar.gz"
    ok "dist/$dir.tar.gz ($(stat -c %s "dist/$dir.tar.gz") bytes)"
done

why=""
if why="$(scripts/install-deps.sh --probe image 2>&1)"; then
    for arch in "${ARCHES[@]}"; do
        image="dist/$NAME-$VERSION-$arch-oci.tar"
        scripts/build-image.sh "${BIN[$arch]}" "$arch" "$image"
        scripts/check-image.sh "$image" "$arch"
    done
else
    say "no OCI images: buildah cannot build images on this machine:"
    printf '    %s\n' "$why"
fi

say "SHA256SUMS"
(cd dist && shopt -s nullglob && sha256sum -- *.tar.gz *.tar >SHA256SUMS) ||
    die "could not write dist/SHA256SUMS"
(cd dist && sha256sum -c SHA256SUMS) || die "sha256sum -c SHA256SUMS failed"
say "dist/ for $VERSION_LINE:"
ls -l dist
