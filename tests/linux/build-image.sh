#!/usr/bin/env bash
# Builds the Linux test image from Debian packages only (see docs/linux.md):
#
#   OUTDIR/bzImage           Debian's cloud kernel, exactly as shipped
#   OUTDIR/initramfs.cpio.gz busybox-static, the kernel's own virtio modules
#                            (virtio_ring, virtio, virtio_mmio, virtio_blk) and
#                            tests/linux/init as /init
#   OUTDIR/pattern.bin       the 64 KiB pattern /init writes at the start of
#                            /dev/vda (also in the initramfs), for the host check
#   OUTDIR/kernel-release    e.g. 6.1.0-56-cloud-amd64
#
# usage: tests/linux/build-image.sh OUTDIR
#
# The .deb files are cached in target/linux/debs/ (and the extracted files in
# target/linux/extract/), so a second run neither downloads nor unpacks. The
# kernel package is whatever Debian's `linux-image-cloud-amd64` currently
# depends on; with no package lists (`apt-get update` never run) a cached
# download is used. Nothing of the kernel is patched; modules shipped as
# .ko.xz are decompressed on the host (busybox's insmod would need its
# optional seamless-xz support, and the kernel's in-kernel decompression
# needs a finit_module flag busybox does not pass).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${PARVM_LINUX_CACHE:-$ROOT/target/linux}
DEBS=$CACHE/debs
MODULES=(virtio_ring virtio virtio_mmio virtio_blk) # load order: virtio_ring first

die() { echo "build-image: $*" >&2; exit 1; }
for tool in apt-get apt-cache dpkg-deb cpio gzip xz; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool: run scripts/install-deps.sh"
done
mkdir -p "$DEBS" "$OUT"

# 1. Which image package the cloud kernel metapackage stands for. A fresh
# machine may have no package lists yet: as root, fetch them once.
image_package() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }' || true
}
kpkg=$(image_package)
if [ -z "$kpkg" ] && [ "$(id -u)" -eq 0 ] && ! ls "$DEBS"/linux-image-*.deb >/dev/null 2>&1; then
    apt-get update >&2 || true
    kpkg=$(image_package)
fi
if [ -z "$kpkg" ]; then
    # No package lists: fall back to the newest cached image package.
    cached=$(ls -1 "$DEBS"/linux-image-[0-9]*-cloud-amd64_*.deb 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$cached" ] || die "apt does not know linux-image-cloud-amd64 and nothing is cached: run 'apt-get update'"
    kpkg=$(basename "$cached" | cut -d_ -f1)
fi

# 2. Download (once) into the cache. apt-get download writes to the current
# directory; the version it picks is the candidate, so a newer candidate is
# fetched once and then cached too.
fetch() {
    local pkg=$1 have
    have=$(ls -1 "$DEBS/${pkg}"_*.deb 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$have" ]; then
        local cand
        cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }')
        # dpkg encodes ':' in file names as %3a.
        if [ -z "$cand" ] || [ "$cand" = "(none)" ] || [[ "$have" == *"_${cand//:/%3a}_"* ]]; then
            echo "$have"
            return
        fi
    fi
    # As root, apt would hand the download to its _apt user, who cannot write
    # into a user's tree (and warns); download as the caller instead.
    local sandbox=()
    [ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
    (cd "$DEBS" && apt-get "${sandbox[@]}" download "$pkg" >&2) || die "apt-get download $pkg failed"
    ls -1 "$DEBS/${pkg}"_*.deb | sort -V | tail -n1
}
kdeb=$(fetch "$kpkg")
bdeb=$(fetch busybox-static)
echo "build-image: kernel $(basename "$kdeb"), busybox $(basename "$bdeb")" >&2

# 3. Extract (once per .deb) only what the image needs.
extract() {
    local deb=$1 dir
    dir=$CACHE/extract/$(basename "$deb" .deb)
    if [ ! -e "$dir/.done" ]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        dpkg-deb -x "$deb" "$dir"
        touch "$dir/.done"
    fi
    echo "$dir"
}
kdir=$(extract "$kdeb")
bdir=$(extract "$bdeb")
release=$(ls -1 "$kdir/lib/modules" | head -n1)
[ -n "$release" ] || die "no /lib/modules in $kdeb"
vmlinuz=$kdir/boot/vmlinuz-$release
[ -f "$vmlinuz" ] || die "no $vmlinuz in $kdeb"
busybox=$bdir/bin/busybox
[ -x "$busybox" ] || die "no /bin/busybox in $bdeb"

# 4. The initramfs tree.
tree=$(mktemp -d "${TMPDIR:-/tmp}/parvm-initramfs.XXXXXX")
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree"/{bin,dev,proc,sys,tmp,lib/modules}
cp "$busybox" "$tree/bin/busybox"
ln -s busybox "$tree/bin/sh"
cp "$HERE/init" "$tree/init"
chmod 755 "$tree/init"
# /dev/console must exist before devtmpfs is mounted: the kernel opens it
# for init's stdin/stdout/stderr.
mknod -m 600 "$tree/dev/console" c 5 1 2>/dev/null || true

builtin=$kdir/lib/modules/$release/modules.builtin
: >"$tree/lib/modules/load-order"
for m in "${MODULES[@]}"; do
    path=$(find "$kdir/lib/modules/$release/kernel" -name "$m.ko" -o -name "$m.ko.xz" | head -n1)
    if [ -z "$path" ]; then
        if [ -f "$builtin" ] && grep -q "/$m.ko$" "$builtin"; then
            echo "build-image: $m is built into the kernel" >&2
            continue
        fi
        die "module $m is neither in $kdeb nor built in"
    fi
    case "$path" in
    *.xz) xz -dc "$path" >"$tree/lib/modules/$m.ko" ;;
    *) cp "$path" "$tree/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$tree/lib/modules/load-order"
done

# The pattern: 64 KiB of numbered lines, deterministic.
awk 'BEGIN { for (i = 0; i < 2048; i++) printf "parvm-linux %06d pattern-line\n", i }' \
    >"$tree/pattern.bin"
[ "$(stat -c %s "$tree/pattern.bin")" -eq 65536 ] || die "pattern is not 64 KiB"

# 5. Outputs (written to temporary names, then renamed). Fixed timestamps
# make the archive reproducible.
find "$tree" -exec touch -h -d @0 {} +
(cd "$tree" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --owner=0:0 --reproducible --quiet) | gzip -9n >"$OUT/initramfs.cpio.gz.tmp"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
cp "$vmlinuz" "$OUT/bzImage.tmp" && mv "$OUT/bzImage.tmp" "$OUT/bzImage"
cp "$tree/pattern.bin" "$OUT/pattern.bin"
echo "$release" >"$OUT/kernel-release"
echo "build-image: $OUT/bzImage ($release), $OUT/initramfs.cpio.gz ($(stat -c %s "$OUT/initramfs.cpio.gz") bytes)" >&2
