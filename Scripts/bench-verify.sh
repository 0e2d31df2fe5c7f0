#!/usr/bin/env bash
# The load generator as a correctness tool: a private tgtd, the server, and
# vhost-user-scsi-bench writing a stamped pattern and reading it back on two queues.
#
# Usage: Scripts/bench-verify.sh BIN_DIR   (holding vhost-user-scsi and vhost-user-scsi-bench)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:?usage: Scripts/bench-verify.sh BIN_DIR}
work=$(mktemp -d /tmp/vus-benchverify.XXXXXX)
port=$((20000 + RANDOM % 10000))
ctl=$((100 + RANDOM % 800))
iqn=iqn.2026-11.org.vhost-user-scsi:verify
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    "$here/tgt.sh" stop "$work/tgt" "$ctl" >/dev/null 2>&1 || true
}
trap cleanup EXIT
mkdir -p "$work/tgt"
"$here/tgt.sh" start "$work/tgt" "$port" "$ctl" "$iqn" lun1.img:64 >&2
"$bin/vhost-user-scsi" --socket "$work/vus.sock" --lun "iscsi://127.0.0.1:$port/$iqn/1" --num-queues 2 \
    >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 50); do [ -S "$work/vus.sock" ] && break; sleep 0.1; done
passed=0
failed=0
for rw in randwrite randrw; do
    if "$bin/vhost-user-scsi-bench" --socket "$work/vus.sock" --queues 2 --iodepth 16 --bs 4k --rw "$rw" \
        --runtime 3 --ramp 0 --verify; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
