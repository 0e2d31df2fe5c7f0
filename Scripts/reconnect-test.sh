#!/usr/bin/env bash
# Restart without loss: while the guest writes and verifies data continuously, kill the server
# with SIGKILL several times and start it again. QEMU (8.2 or later: reconnect of
# vhost-user-scsi) reconnects, hands the new server the inflight region, and the new server
# resubmits what was in flight. The guest must see no I/O error and its verification must pass.
#
# Usage: Scripts/reconnect-test.sh SERVER_BINARY [--kills N] [--qemu PATH]
#   --qemu defaults to QEMU 10.0 made runnable by Scripts/qemu10.sh.
# Prints "N passed, M failed" at the end; exits non-zero on failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
server=$(realpath "${1:?usage: Scripts/reconnect-test.sh SERVER_BINARY [--kills N] [--qemu PATH]}")
shift
kills=3
qemu=
while (($#)); do
    case $1 in
        --kills) kills=$2; shift 2 ;;
        --qemu) qemu=$2; shift 2 ;;
        *) echo "reconnect-test: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$qemu" ] || qemu=$("$here/qemu10.sh" | tail -1)

work=$(mktemp -d /tmp/vus-reconnect.XXXXXX)
port=$((20000 + RANDOM % 10000))
ctl=$((100 + RANDOM % 800))
iqn=iqn.2026-11.org.vhost-user-scsi:reconnect
url=iscsi://127.0.0.1:$port/$iqn/1
sock=$work/vus.sock
passed=0
failed=0
server_pid=
guest_pid=

check() {
    if [ "$2" = 0 ]; then echo "reconnect: PASS $1 ${3:-}"; passed=$((passed + 1))
    else echo "reconnect: FAIL $1 ${3:-}"; failed=$((failed + 1)); fi
}
start_server() {
    "$server" --socket "$sock" --lun "$url" --num-queues 2 --log-level "${VUS_LOG_LEVEL:-info}" >>"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && return 0; sleep 0.05; done
    return 1
}
cleanup() {
    [ -n "$guest_pid" ] && kill "$guest_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    "$here/tgt.sh" stop "$work/tgt" "$ctl" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$here/build-guest.sh" "$root/guest/out" >&2
mkdir -p "$work/tgt"
"$here/tgt.sh" start "$work/tgt" "$port" "$ctl" "$iqn" lun1.img:256 >&2
start_server

"$here/run-guest.sh" --qemu "$qemu" --vhost-user "$sock" --reconnect-ms 200 --num-queues 2 \
    --workload migrate --append "vus.migrate_seconds=${VUS_SECONDS:-45} vus.migrate_fio_iodepth=32" \
    --quiet --timeout ${VUS_TIMEOUT:-400} --log "$work/guest.log" >"$work/guest.out" 2>&1 &
guest_pid=$!

# Wait until the guest is writing, then kill the server at intervals while it is.
for _ in $(seq 600); do grep -q "migrate-progress" "$work/guest.log" 2>/dev/null && break; sleep 0.1; done
for k in $(seq "$kills"); do
    sleep 4
    kill -KILL "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    echo "reconnect: killed the server (kill $k of $kills)" >&2
    sleep 0.5
    start_server
    check "restart_$k" "$([ -S "$sock" ]; echo $?)"
done

set +e
wait "$guest_pid"; rc=$?
guest_pid=
set -e
cat "$work/guest.out"
check guest_verified "$rc" "(guest log $work/guest.log)"
check no_io_errors "$(! grep -qiE 'I/O error|critical medium|blk_update_request' "$work/guest.log"; echo $?)"
resubmits=$(grep -c "resubmitting [1-9]" "$work/server.log" || true)
reconnects=$(grep -c "frontend connected" "$work/server.log" || true)
echo "reconnect: QEMU connected $reconnects times; $resubmits ring starts resubmitted in-flight requests" >&2
grep -E "resubmitting|resuming" "$work/server.log" | sed 's/^/reconnect:   server: /' >&2 || true
check qemu_reconnected "$([ "$reconnects" -gt "$kills" ]; echo $?)" "($reconnects connections)"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
