#!/usr/bin/env bash
# End-to-end test: a real tgtd on 127.0.0.1 with two LUNs (one given by address, one by the
# name localhost), the vhost-user-scsi server, and a
# real QEMU booting the test guest, which checks the disks from inside (Docs/GUEST.md).
# Also checks the command line's error behaviour and a clean SIGTERM shutdown.
#
# Usage: Scripts/e2e.sh SERVER_BINARY [WORKDIR]
# Prints "N passed, M failed" at the end; exits non-zero if anything failed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
server=$(realpath "${1:?usage: Scripts/e2e.sh SERVER_BINARY [WORKDIR]}")
work=${2:-$(mktemp -d /tmp/vus-e2e.XXXXXX)}
mkdir -p "$work"
port=$((20000 + RANDOM % 10000))
ctl=$((100 + RANDOM % 800))
iqn=iqn.2026-11.org.vhost-user-scsi:e2e
url1=iscsi://127.0.0.1:$port/$iqn/1
# The second LUN by host name, as operators often give them: the request queues look the name
# up off the data path (Docs/OUTAGES.md, "Host names in URLs"). tgtd listens on 127.0.0.1.
url2=iscsi://localhost:$port/$iqn/2
passed=0
failed=0
server_pid=

check() {  # check NAME CONDITION-RESULT DETAIL
    if [ "$2" = 0 ]; then
        echo "e2e: PASS $1 ${3:-}"
        passed=$((passed + 1))
    else
        echo "e2e: FAIL $1 ${3:-}"
        failed=$((failed + 1))
    fi
}

cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    "$here/tgt.sh" stop "$work/tgt" "$ctl" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$here/build-guest.sh" "$root/guest/out" >&2
mkdir -p "$work/tgt"
"$here/tgt.sh" start "$work/tgt" "$port" "$ctl" "$iqn" lun1.img:256 lun2.img:128 >&2

# --- command line behaviour -------------------------------------------------------------
set +e
"$server" --socket "$work/x.sock" >"$work/usage.out" 2>&1; rc=$?
check usage_missing_lun "$([ $rc = 2 ] && [ "$(wc -l <"$work/usage.out")" = 1 ]; echo $?)" "exit $rc: $(cat "$work/usage.out")"
"$server" --socket "$work/x.sock" --lun http://nope >"$work/usage.out" 2>&1; rc=$?
check usage_bad_url "$([ $rc = 2 ] && [ "$(wc -l <"$work/usage.out")" = 1 ]; echo $?)" "exit $rc: $(cat "$work/usage.out")"
"$server" --socket "$work/x.sock" --lun "iscsi://127.0.0.1:1/$iqn/1" >"$work/usage.out" 2>&1; rc=$?
check unreachable_target "$([ $rc = 1 ] && [ "$(grep -c . "$work/usage.out")" = 1 ]; echo $?)" "exit $rc: $(tail -1 "$work/usage.out")"
"$server" --socket "$work/x.sock" --lun "iscsi://127.0.0.1:$port/$iqn/7" >"$work/usage.out" 2>&1; rc=$?
check missing_lun "$([ $rc = 1 ]; echo $?)" "exit $rc: $(tail -1 "$work/usage.out")"
"$server" --help >"$work/usage.out" 2>&1; rc=$?
check help "$([ $rc = 0 ] && grep -q -- --num-queues "$work/usage.out"; echo $?)" "exit $rc"
set -e

# --- the guest ----------------------------------------------------------------------------
sock=$work/vus.sock
"$server" --socket "$sock" --lun "$url1" --lun "$url2" --num-queues 2 --log-level info >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$work/server.log"; echo "e2e: server did not start"; exit 1; }

set +e
"$here/run-guest.sh" --vhost-user "$sock" --num-queues 2 --workload e2e --append vus.expect_luns=2 \
    --expect-target "$url1" --expect-target "$url2" --quiet --timeout 600 --log "$work/guest.log" | tee "$work/guest.out"
rc=${PIPESTATUS[0]}
set -e
check guest_e2e "$rc" "($(grep -c 'VUS-RESULT .* PASS' "$work/guest.log") guest checks passed; log $work/guest.log)"

# The server keeps running after QEMU leaves and takes the next frontend.
sleep 0.5
check survives_disconnect "$(kill -0 "$server_pid" 2>/dev/null; echo $?)"
set +e
"$here/run-guest.sh" --vhost-user "$sock" --num-queues 2 --workload demo --append vus.expect_luns=2 \
    --quiet --timeout 300 --log "$work/guest2.log" >"$work/guest2.out" 2>&1
rc=$?
set -e
check second_connection "$rc" "(demo workload over a new connection)"

# SIGTERM: in-flight I/O finished, sessions logged out, exit 0.
kill -TERM "$server_pid"
set +e
wait "$server_pid"; rc=$?
set -e
server_pid=
check sigterm_exit_0 "$([ $rc = 0 ] && grep -q 'shut down cleanly' "$work/server.log"; echo $?)" "exit $rc"
check no_crash_in_log "$(! grep -qiE 'fatal error|stack trace|SIGSEGV|precondition' "$work/server.log"; echo $?)"
check socket_removed "$([ ! -e "$sock" ]; echo $?)"

echo "e2e: server log: $work/server.log"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
