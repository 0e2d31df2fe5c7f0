#!/usr/bin/env bash
# The demo: on a fresh Debian 12 machine with Swift, installs what is needed, starts a local
# tgtd with a scratch 256 MiB LUN on 127.0.0.1, the vhost-user-scsi server in front of it, and
# a QEMU guest (TCG) that finds the disk, writes and reads it back, runs fio and prints what
# it saw. Everything it starts is stopped at the end.
#
# Usage: Scripts/demo.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

"$here/install-deps.sh"
echo "== building the server (release)" >&2
swift build -c release --static-swift-stdlib --product vhost-user-scsi 2>&1 | tail -1
server="$(swift build -c release --static-swift-stdlib --show-bin-path)/vhost-user-scsi"
echo "== building the guest image" >&2
"$here/build-guest.sh" "$root/guest/out" >&2

work=$(mktemp -d /tmp/vus-demo.XXXXXX)
port=$((20000 + RANDOM % 10000))
ctl=$((100 + RANDOM % 800))
iqn=iqn.2026-11.org.vhost-user-scsi:demo
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    "$here/tgt.sh" stop "$work/tgt" "$ctl" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== starting tgtd on 127.0.0.1:$port with a scratch 256 MiB LUN" >&2
mkdir -p "$work/tgt"
"$here/tgt.sh" start "$work/tgt" "$port" "$ctl" "$iqn" scratch.img:256 >&2
url=iscsi://127.0.0.1:$port/$iqn/1

echo "== starting vhost-user-scsi --socket $work/vus.sock --lun $url" >&2
"$server" --socket "$work/vus.sock" --lun "$url" --num-queues 2 >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 50); do [ -S "$work/vus.sock" ] && break; sleep 0.1; done
sed 's/^/  server: /' "$work/server.log" >&2

echo "== booting the guest (QEMU, vhost-user-scsi-pci, 2 request queues)" >&2
"$here/run-guest.sh" --vhost-user "$work/vus.sock" --num-queues 2 --workload demo \
    --log "$work/guest.log" --timeout 300
echo "== server log: $work/server.log" >&2
