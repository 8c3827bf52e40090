#!/usr/bin/env bash
# Install the host packages parvm's build and tests need (Debian/Ubuntu).
#
#   binutils            GNU as/ld, used by tests/guests/build.sh to build the
#                       tiny test guest kernels from source
#   qemu-system-x86     reference VMM: boots the same guest images so the guest
#                       can be checked independently of parvm's own vmm
#   python3             small helper scripts in tests and docs
#   acpica-tools        iasl: vmm/tests/acpi_iasl.rs disassembles the VMM's
#                       ACPI tables with it (default suite)
#   cpio xz-utils       tests/linux/build-image.sh packs the Linux test
#                       initramfs (cpio) and unpacks .ko.xz modules (xz)
#   curl                partition-manager/tests/api.rs drives the HTTP API
#                       with `curl --unix-socket`, as docs/api.md shows
#   python3-prometheus-client
#                       the same tests parse /metrics with Prometheus's own
#                       (Python) parser
#   python3-venv        target/pyenv: a virtualenv (with the system's
#                       packages) holding schemathesis from PyPI, which
#                       tests/api.rs runs against the served OpenAPI document
#   gdb                 the dump tests (vios/tests/dump.rs,
#                       partition-manager/tests/dump.rs) read the cores with
#                       batch gdb; readelf comes with binutils
#
# Idempotent: packages already installed are skipped, and `apt-get update`
# runs at most once, only when something has to be installed. Usable by CI as
# root (no sudo needed); as a normal user it uses sudo when available.
set -euo pipefail

PKGS=(binutils qemu-system-x86 python3 acpica-tools cpio xz-utils curl python3-prometheus-client python3-venv gdb)
# PyPI packages in target/pyenv (pinned: a new release may check more).
PY_PKGS=(schemathesis==4.32.5)
PYENV="$(cd "$(dirname "$0")/.." && pwd)/target/pyenv"

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

# The virtualenv for the PyPI packages (after the Debian ones: it needs
# python3-venv and sees python3-prometheus-client).
pyenv() {
    if [ -x "$PYENV/bin/schemathesis" ]; then
        echo "install-deps: $PYENV present (${PY_PKGS[*]})"
        return
    fi
    echo "install-deps: creating $PYENV with ${PY_PKGS[*]}"
    /usr/bin/python3 -m venv --system-site-packages "$PYENV"
    "$PYENV/bin/pip" install --quiet "${PY_PKGS[@]}"
}

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all present (${PKGS[*]})"
    pyenv
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${missing[@]}"
pyenv
