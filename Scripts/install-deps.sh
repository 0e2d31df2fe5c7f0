#!/usr/bin/env bash
# Install the Debian 12 packages the server, its tests and the demo need (root; quick when
# they are already there). Swift itself is expected on PATH (see README).
#
# Usage: Scripts/install-deps.sh
set -euo pipefail

packages=(
    libiscsi-dev libiscsi-bin     # the server's iSCSI initiator; host-side checks (iscsi-inq, ...)
    tgt                           # the iSCSI target the tests and the demo run on 127.0.0.1
    qemu-system-x86 qemu-block-extra  # the VMM, and its built-in iSCSI driver for comparisons
    busybox-static fio sg3-utils e2fsprogs cpio kmod  # the test guest's userland
    pkg-config iproute2 procps
    python3                       # Scripts/migtool.py (QMP), the module list in Fuzz/run.sh
    systemd strace libxml2-utils libvirt-clients groff-base man-db  # Scripts/examples-test.sh:
                                  # systemd-analyze, the sandbox check, xmllint, virt-xml-validate, the man page
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: all packages present" >&2
