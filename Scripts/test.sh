#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine with Swift on PATH: installs the Debian
# packages, runs the unit and integration tests (swift test, with a real tgtd for the iSCSI
# tests), then builds the server once in release mode and runs the end-to-end test with a
# real QEMU guest.
#
# Usage: Scripts/test.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

"$here/install-deps.sh"
"$here/build-guest.sh" "$root/guest/out" >&2 &
guest_pid=$!

echo "== swift test" >&2
swift test 2>&1 | tee /tmp/vus-swift-test.log | grep -vE '^\[[0-9]+/[0-9]+\] (Compiling|Emitting|Linking|Write)' || {
    wait "$guest_pid" || true
    exit 1
}
wait "$guest_pid"

echo "== release build" >&2
swift build -c release --product vhost-user-scsi 2>&1 | tail -3
echo "== end to end" >&2
"$here/e2e.sh" "$(swift build -c release --show-bin-path)/vhost-user-scsi"
