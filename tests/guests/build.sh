#!/usr/bin/env bash
# Build the tiny test guest kernels from source with GNU as and ld only.
#
#   tests/guests/build.sh OUTDIR
#
# produces in OUTDIR:
#   tiny.elf      ELF64 at 1 MiB with a PVH note (32-bit entry at 0x100000)
#                 and e_entry = the 64-bit entry (0x100200)
#   tiny64.elf    the same code without the PVH note (64-bit Linux boot)
#   tiny.bzImage  bzImage: 2 KiB setup + the same code as a flat binary at
#                 1 MiB whose offset 0x200 is the 64-bit entry
# plus the intermediate objects. tiny.S includes blk.S (the virtio-blk
# driver), grant.S (grant roles) and mem.S (memtest). See docs/guests.md.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
src="$(cd "$(dirname "$0")" && pwd)"
out="$1"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

AS="${AS:-as}"
LD="${LD:-ld}"
for tool in "$AS" "$LD"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build.sh: '$tool' not found: install GNU binutils (scripts/install-deps.sh)" >&2
        exit 1
    fi
done

# -z noexecstack / --no-warn-rwx-segments: this is a kernel, its single
# segment is deliberately RWX; keep ld quiet about it (older ld lacks the
# flag, so only pass it when supported).
LDFLAGS=(-nostdlib -z max-page-size=4096 -z noexecstack)
ld_help="$("$LD" --help 2>/dev/null || true)"
if [[ "$ld_help" == *--no-warn-rwx-segments* ]]; then
    LDFLAGS+=(--no-warn-rwx-segments)
fi

tmp="$out/.build.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

"$AS" --64 -I "$src" -o "$tmp/tiny.o" "$src/tiny.S"     # .include blk.S grant.S mem.S
"$AS" --64 -o "$tmp/pvh-note.o" "$src/pvh-note.S"
"$AS" --64 -o "$tmp/bzsetup.o" "$src/bzsetup.S"

# The linker scripts INCLUDE asserts.ld: -L makes it findable.
"$LD" "${LDFLAGS[@]}" -L "$src" -T "$src/tiny.ld" -o "$tmp/tiny.elf" \
    "$tmp/tiny.o" "$tmp/pvh-note.o"
"$LD" "${LDFLAGS[@]}" -L "$src" -T "$src/tiny64.ld" -o "$tmp/tiny64.elf" \
    "$tmp/tiny.o"
"$LD" "${LDFLAGS[@]}" -L "$src" -T "$src/bzimage.ld" -o "$tmp/tiny.bzImage" \
    "$tmp/bzsetup.o" "$tmp/tiny.o"

# Install atomically so a concurrent reader never sees a half-written image.
for f in tiny.elf tiny64.elf tiny.bzImage; do
    mv -f "$tmp/$f" "$out/$f"
done
echo "build.sh: built tiny.elf tiny64.elf tiny.bzImage in $out"
