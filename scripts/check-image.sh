#!/usr/bin/env bash
# Checks an OCI image archive written by scripts/build-image.sh (run by
# `make image-check` and `make dist`), without any container runtime:
#
#   1. the archive is an OCI layout with one image, whose config has
#      ENTRYPOINT ["/etcd-await-election"], a numeric non-root USER and the
#      expected architecture (and variant: v7 for armv7)
#   2. one layer, holding exactly one file: /etcd-await-election
#   3. size: the archive and the unpacked root both within SIZE_BUDGET
#      (default 3 MiB = 3145728 bytes)
#   4. the unpacked root filesystem passes scripts/check-release.sh, which
#      enters it with chroot (as the image's USER; or unshare) and runs
#      --version and a real
#      election from it: what `podman run` would do, minus the runtime (which
#      may be refused in a sandbox, e.g. podman failing on setrlimit)
#
# Usage: scripts/check-image.sh ARCHIVE [ARCH]   (ARCH: x86_64 (default),
#        aarch64 or armv7; an image is inspected on any machine, but only run
#        where `uname -m` is ARCH)
# Needs: python3, tar, and what scripts/check-release.sh needs.
set -euo pipefail

[ "$#" -ge 1 ] || { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
ARCHIVE="$(realpath "$1")" ARCH="${2:-x86_64}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SIZE_BUDGET="${SIZE_BUDGET:-3145728}"

say() { printf '==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
die() {
    printf '\n==> IMAGE CHECK FAILED: %s\n\n' "$*" >&2
    exit 1
}

case "$ARCH" in
    x86_64) OCI_ARCH=amd64 OCI_VARIANT="" ;;
    aarch64) OCI_ARCH=arm64 OCI_VARIANT="" ;;
    armv7) OCI_ARCH=arm OCI_VARIANT=v7 ;;
    *) die "unknown ARCH '$ARCH' (x86_64, aarch64 or armv7)" ;;
esac
[ -f "$ARCHIVE" ] || die "$ARCHIVE not found (scripts/build-image.sh writes it)"
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/eae-image-check.XXXXXX")"
trap 'rm -rf "$WORKDIR"' EXIT

say "Checking image archive $ARCHIVE ($ARCH)"
mkdir "$WORKDIR/oci" "$WORKDIR/root"
tar -C "$WORKDIR/oci" -xf "$ARCHIVE" || die "cannot unpack $ARCHIVE"

# 1 + 2: the image's manifest and config; the last line is the layer blob's
# path and the image's USER.
INSPECT="$(python3 - "$WORKDIR/oci" "$OCI_ARCH" "$OCI_VARIANT" <<'PY'
import json, os, re, sys
oci, arch, variant = sys.argv[1], sys.argv[2], sys.argv[3]
def blob(digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(oci, "blobs", algo, hexd)
def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)
index = json.load(open(os.path.join(oci, "index.json")))
if len(index.get("manifests", [])) != 1:
    fail(f"expected one image in index.json, found {len(index.get('manifests', []))}")
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
config = json.load(open(blob(manifest["config"]["digest"])))
layers = manifest.get("layers", [])
if len(layers) != 1:
    fail(f"expected one layer, found {len(layers)}")
print(f"    ok: one layer ({layers[0]['size']} bytes, {layers[0]['mediaType']})")
c = config.get("config", {})
if c.get("Entrypoint") != ["/etcd-await-election"]:
    fail(f"Entrypoint is {c.get('Entrypoint')}, expected ['/etcd-await-election']")
print(f"    ok: Entrypoint {c['Entrypoint']}, Cmd {c.get('Cmd')}")
user = c.get("User", "")
if not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", user):
    fail(f"User is {user!r}, expected a numeric non-root uid[:gid]")
print(f"    ok: User {user}")
if config.get("architecture") != arch or config.get("os") != "linux":
    fail(f"platform is {config.get('os')}/{config.get('architecture')}, expected linux/{arch}")
# Only a 32-bit ARM image must name its variant: a runtime picks arm/v7 by it.
if variant and config.get("variant") != variant:
    fail(f"variant is {config.get('variant')!r}, expected {variant!r}")
print(f"    ok: platform linux/{arch}{'/' + variant if variant else ''}")
print(blob(layers[0]["digest"]), user)
PY
)" || die "the image's manifest or config is not as expected (above)"
sed '$d' <<<"$INSPECT"
read -r LAYER USER_SPEC <<<"$(tail -n 1 <<<"$INSPECT")"

mapfile -t FILES < <(tar -tzf "$LAYER")
if [ "${#FILES[@]}" -ne 1 ] || [ "${FILES[0]#./}" != etcd-await-election ]; then
    die "the layer should hold exactly etcd-await-election, holds: ${FILES[*]}"
fi
ok "the layer holds one file: /etcd-await-election"
tar -C "$WORKDIR/root" -xzf "$LAYER" || die "cannot unpack the layer"

# 3. size
ARCHIVE_SIZE="$(stat -c %s "$ARCHIVE")"
ROOT_SIZE="$(du -sb "$WORKDIR/root" | cut -f1)"
printf '    archive %d bytes, unpacked root %d bytes; budget %d bytes\n' \
    "$ARCHIVE_SIZE" "$ROOT_SIZE" "$SIZE_BUDGET"
[ "$ARCHIVE_SIZE" -le "$SIZE_BUDGET" ] || die "the archive is over the budget"
[ "$ROOT_SIZE" -le "$SIZE_BUDGET" ] || die "the unpacked root is over the budget"
ok "within the size budget"

# 4. the unpacked root, run as the empty-root check runs a release binary
if [ "$ARCH" != "$(uname -m)" ]; then
    say "not running the $ARCH root on $(uname -m) (its binary is checked by make release-$ARCH)"
    say "image check passed: $ARCHIVE"
    exit 0
fi
say "Running the unpacked root filesystem (scripts/check-release.sh, ROOT_DIR=the image's root)"
BIN="$WORKDIR/root/etcd-await-election" ROOT_DIR="$WORKDIR/root" ROOT_USER="$USER_SPEC" \
    scripts/check-release.sh ||
    die "the image's root filesystem failed the release check (above)"
say "image check passed: $ARCHIVE"
