#!/usr/bin/env bash
# Builds the Linux image for the VIOS interop test (vios/tests/qemu_interop.rs,
# docs/vios.md): tests/linux/build-image.sh's image, plus an initramfs that
# also loads the kernel's virtio PCI modules, so the guest finds QEMU's
# vhost-user-blk-pci device:
#
#   OUTDIR/bzImage, OUTDIR/pattern.bin, OUTDIR/kernel-release   (build-image.sh)
#   OUTDIR/initramfs.cpio.gz                                    (build-image.sh)
#   OUTDIR/initramfs-pci.cpio.gz  the same archive with virtio_pci_legacy_dev,
#                                 virtio_pci_modern_dev and virtio_pci added
#                                 to /lib/modules and its load order
#
# usage: tests/linux/build-vios-initramfs.sh OUTDIR
#
# Everything comes from the Debian packages build-image.sh downloads and
# caches (target/linux/); the /init is build-image.sh's (tests/linux/init):
# it writes pattern.bin to the start of /dev/vda, reads it back, prints
# `parvm-linux: vda ok <sha256>` and powers off.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${PARVM_LINUX_CACHE:-$ROOT/target/linux}
PCI_MODULES=(virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci)

die() { echo "build-vios-initramfs: $*" >&2; exit 1; }
for tool in cpio gzip xz find; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool: run scripts/install-deps.sh"
done

"$HERE/build-image.sh" "$OUT"
release=$(cat "$OUT/kernel-release")
moddir=$(ls -d "$CACHE"/extract/linux-image-"$release"_*/lib/modules/"$release" 2>/dev/null | head -n1)
[ -n "$moddir" ] && [ -d "$moddir" ] || die "no extracted modules for $release under $CACHE/extract"

tree=$(mktemp -d "${TMPDIR:-/tmp}/parvm-vios-initramfs.XXXXXX")
trap 'rm -rf "$tree"' EXIT
(cd "$tree" && gzip -dc "$OUT/initramfs.cpio.gz" | cpio -idm --quiet 2>/dev/null) ||
    die "cannot unpack $OUT/initramfs.cpio.gz"
[ -f "$tree/lib/modules/load-order" ] || die "$OUT/initramfs.cpio.gz has no /lib/modules/load-order"

added=()
for m in "${PCI_MODULES[@]}"; do
    path=$(find "$moddir/kernel" -name "$m.ko" -o -name "$m.ko.xz" | head -n1)
    if [ -z "$path" ]; then
        if grep -q "/$m.ko$" "$moddir/modules.builtin" 2>/dev/null; then
            continue # built in
        fi
        die "module $m is neither shipped nor built into $release"
    fi
    case "$path" in
    *.xz) xz -dc "$path" >"$tree/lib/modules/$m.ko" ;;
    *) cp "$path" "$tree/lib/modules/$m.ko" ;;
    esac
    added+=("$m")
done

# New load order: the PCI transport right after `virtio` (its dependency),
# before the device drivers.
order=$tree/lib/modules/load-order
{
    while read -r m; do
        echo "$m"
        if [ "$m" = virtio ]; then
            for a in "${added[@]}"; do echo "$a"; done
        fi
    done <"$order"
} >"$order.new"
grep -qx virtio "$order" || die "load order has no virtio module"
mv "$order.new" "$order"

find "$tree" -exec touch -h -d @0 {} +
(cd "$tree" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --owner=0:0 --reproducible --quiet) | gzip -9n >"$OUT/initramfs-pci.cpio.gz.tmp"
mv "$OUT/initramfs-pci.cpio.gz.tmp" "$OUT/initramfs-pci.cpio.gz"
echo "build-vios-initramfs: $OUT/initramfs-pci.cpio.gz (load order: $(tr '\n' ' ' <"$order"))" >&2
