#!/usr/bin/env bash
# Builds the OCI image of packaging/Containerfile around one static binary and
# writes it as an OCI archive (`podman load -i`, `skopeo copy oci-archive:`).
#
# Usage: scripts/build-image.sh BIN ARCH OUT.tar
#   BIN   the static release binary (built and checked already)
#   ARCH  x86_64, aarch64 or armv7 (the image platform: linux/amd64,
#         linux/arm64, linux/arm/v7)
#   OUT   the archive to write; its image is named etcd-await-election:VERSION
#
# buildah runs with a private, throwaway storage (vfs, in a temp dir): it
# leaves no image or layer behind on the machine and needs no daemon. It only
# copies a file into an empty image, so no container is ever run. The image's
# timestamp is the commit's, so the same binary gives the same archive.
# Needs: buildah (scripts/install-deps.sh --image).
set -euo pipefail

[ "$#" -eq 3 ] || { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
BIN="$(realpath "$1")" ARCH="$2" OUT="$(realpath -m "$3")"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { printf '==> IMAGE BUILD FAILED: %s\n' "$*" >&2; exit 1; }

case "$ARCH" in
    x86_64) PLATFORM=linux/amd64 ;;
    aarch64) PLATFORM=linux/arm64 ;;
    armv7) PLATFORM=linux/arm/v7 ;;
    *) die "unknown ARCH '$ARCH' (x86_64, aarch64 or armv7)" ;;
esac
[ -x "$BIN" ] || die "$BIN is not an executable file"
scripts/install-deps.sh --probe image || die "no working image builder (see above)"
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)"
COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
EPOCH="$(git log -1 --format=%ct 2>/dev/null || echo 0)"
TAG="localhost/etcd-await-election:$VERSION-$ARCH"

WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/eae-image.XXXXXX")"
BUILDAH=(buildah --root "$WORKDIR/storage" --runroot "$WORKDIR/run" --storage-driver vfs)
cleanup() {
    "${BUILDAH[@]}" rmi -a -f >/dev/null 2>&1 || true
    rm -rf "$WORKDIR"
}
trap cleanup EXIT

# The context holds the binary and nothing else.
mkdir "$WORKDIR/context"
cp "$BIN" "$WORKDIR/context/etcd-await-election"
"${BUILDAH[@]}" build --quiet --platform "$PLATFORM" --timestamp "$EPOCH" \
    --build-arg "VERSION=$VERSION" --build-arg "COMMIT=$COMMIT" \
    -f packaging/Containerfile -t "$TAG" "$WORKDIR/context" >/dev/null ||
    die "buildah build failed"
"${BUILDAH[@]}" push --quiet "$TAG" "oci:$WORKDIR/layout:etcd-await-election:$VERSION" ||
    die "buildah push to an OCI layout failed"
# The archive is the layout, tarred the way `oci-archive:` is, but with fixed
# owners, order and mtimes: the same binary gives the same bytes.
mkdir -p "$(dirname "$OUT")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" \
    -C "$WORKDIR/layout" -cf "$OUT" oci-layout index.json blobs ||
    die "cannot write $OUT"
echo "==> image etcd-await-election:$VERSION ($PLATFORM, commit $COMMIT): $OUT ($(stat -c %s "$OUT") bytes)"
