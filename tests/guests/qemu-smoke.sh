#!/usr/bin/env bash
# Boot the tiny guests under QEMU (a reference VMM, independent of parvm's
# vmm) and check every line they print. Not part of the cargo test suite:
# a tool for changing the guest. Needs qemu-system-x86_64
# (scripts/install-deps.sh) and python3.
#
#   tests/guests/qemu-smoke.sh [GUESTDIR] [--kvm]
#
# GUESTDIR defaults to target/guests (built by `cargo build -p parvm-tests`
# or tests/guests/build.sh). Without --kvm it uses TCG (pure emulation); with
# --kvm it adds "-enable-kvm -cpu host,-arch-capabilities" (the
# -arch-capabilities is needed on PVM hosts, see docs/guests.md).
#
# Cases: PVH ELF on microvm and q35, bzImage on q35 (through its real-mode
# setup code), each with an initrd and 2 vCPUs; then the triplefault,
# exception and hang switches, and no initrd / no ACPI; then the virtio-blk
# driver on a fresh disk and on the same disk read-only.
set -uo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="$root/target/guests"
accel=()
for a in "$@"; do
    case "$a" in
        --kvm) accel=(-enable-kvm -cpu host,-arch-capabilities) ;;
        *) dir="$a" ;;
    esac
done
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 not found (scripts/install-deps.sh)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
head -c 100000 /dev/urandom > "$tmp/initrd"
fnv="$(python3 -c '
import sys
h = 0xcbf29ce484222325
for b in open(sys.argv[1], "rb").read():
    h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
print("%016x" % h)' "$tmp/initrd")"

pass=0
fail=0
# run NAME TIMEOUT EXPECTED-LINES... -- QEMU-ARGS...
run() {
    local name="$1" t="$2"; shift 2
    local want=()
    while [ "$1" != "--" ]; do want+=("$1"); shift; done
    shift
    timeout "$t" qemu-system-x86_64 "${accel[@]}" -nographic -no-reboot -net none "$@" \
        > "$tmp/out" 2>&1
    local rc=$?
    tr -d '\r' < "$tmp/out" | grep -a '^.*parvm-guest: ' | sed 's/^.*parvm-guest: /parvm-guest: /' > "$tmp/lines"
    local ok=1 w
    for w in "${want[@]}"; do
        grep -qxF -- "$w" "$tmp/lines" || { ok=0; echo "  missing: $w"; }
    done
    if [ "$ok" = 1 ]; then
        pass=$((pass + 1)); echo "ok   $name (qemu rc=$rc)"
    else
        fail=$((fail + 1)); echo "FAIL $name (qemu rc=$rc); got:"; sed 's/^/    /' "$tmp/lines"
    fi
}

common=(
    "parvm-guest: ready"
    "parvm-guest: mem=63MiB"
    "parvm-guest: cmdline=hello world"
    "parvm-guest: cpus=2"
    "parvm-guest: smp online=2/2"
    "parvm-guest: cpl=3"
    "parvm-guest: initrd bytes=100000 fnv1a64=$fnv"
    "parvm-guest: poweroff"
)
run "microvm pvh" 60 "${common[@]}" "parvm-guest: boot=pvh" -- \
    -M microvm -smp 2 -m 64 -kernel "$dir/tiny.elf" -initrd "$tmp/initrd" -append "hello world"
run "q35 pvh" 120 "${common[@]}" "parvm-guest: boot=pvh" -- \
    -M q35 -smp 2 -m 64 -kernel "$dir/tiny.elf" -initrd "$tmp/initrd" -append "hello world"
run "q35 bzImage" 120 "${common[@]}" "parvm-guest: boot=linux64" -- \
    -M q35 -smp 2 -m 64 -kernel "$dir/tiny.bzImage" -initrd "$tmp/initrd" -append "hello world"
run "triplefault" 60 "parvm-guest: triple fault now" -- \
    -M microvm -m 64 -kernel "$dir/tiny.elf" -append "parvm.test=triplefault"
run "exception" 60 "parvm-guest: initrd none" -- \
    -M microvm -m 64 -kernel "$dir/tiny.elf" -append "parvm.test=exception"
grep -qa "parvm-guest: exception 6 rip=0x" "$tmp/out" || { fail=$((fail + 1)); echo "FAIL exception line"; }
run "no acpi" 60 "parvm-guest: cpus=1 (no acpi)" "parvm-guest: smp online=1/1" "parvm-guest: cmdline=" -- \
    -M microvm,acpi=off -m 64 -kernel "$dir/tiny.elf"
run "hang" 5 "parvm-guest: hanging" -- \
    -M microvm -m 64 -kernel "$dir/tiny.elf" -append "parvm.test=hang"
# virtio-blk (parvm.test=blk): microvm appends virtio_mmio.device= only
# without ACPI, and its transports are legacy unless force-legacy=false.
truncate -s 1M "$tmp/disk.img"
blk=(-M microvm,acpi=off -global virtio-mmio.force-legacy=false -m 64 -kernel "$dir/tiny.elf"
     -append "parvm.test=blk")
run "virtio-blk" 60 "parvm-guest: blk capacity=2048 ro=0 serial=smoke" \
    "parvm-guest: blk write=0 flush=0 read=0 match=yes fnv1a64=9986410a773ebf25" "parvm-guest: poweroff" -- \
    "${blk[@]}" -drive "file=$tmp/disk.img,if=none,id=d0,format=raw" -device virtio-blk-device,drive=d0,serial=smoke
run "virtio-blk ro" 60 "parvm-guest: blk capacity=2048 ro=1 serial=golden" \
    "parvm-guest: blk write=1 flush=0 read=0 match=yes fnv1a64=9986410a773ebf25" "parvm-guest: poweroff" -- \
    "${blk[@]}" -drive "file=$tmp/disk.img,if=none,id=d0,format=raw,readonly=on" -device virtio-blk-device,drive=d0,serial=golden

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
