#!/usr/bin/env bash
# Target-outage end-to-end test (Docs/OUTAGES.md): a QEMU guest writes and verifies data
# continuously (guest workload "outage": fio randwrite + crc32c verify) through the server
# while the iSCSI target goes away:
#   restart  tgtd is stopped and started again on the same backing file
#   block    the target's port is blocked (iptables DROP, the connection stays open but
#            silent) for a while shorter than the server's --target-timeout
#   boot     the target's port is blocked before the guest starts, so the request queues'
#            first logins fail and are retried in the background while the guest's SCSI scan
#            waits; it opens again 12 s later
# Each must pass with the data verified and no I/O error in the guest; the guest's kernel log
# (what the guest saw) and the server's reconnect lines are printed.
#
# tgtd and the server run inside a network namespace made for the test, on its own loopback,
# so blocking the port touches nothing else on the machine. QEMU reaches the server through
# its Unix socket as usual.
#
# Usage: Scripts/outage-test.sh SERVER_BINARY [WORKDIR]
#   OUTAGE_SCENARIOS="restart block boot" (default all three), OUTAGE_FIO_SECONDS (default 45)
# Needs root (ip netns, iptables; iptables is installed with apt-get when missing).
# Prints "N passed, M failed" at the end; exits non-zero if anything failed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
server=$(realpath "${1:?usage: Scripts/outage-test.sh SERVER_BINARY [WORKDIR]}")
work=${2:-$(mktemp -d /tmp/vus-outage.XXXXXX)}
mkdir -p "$work"
scenarios=${OUTAGE_SCENARIOS:-restart block boot}
fio_seconds=${OUTAGE_FIO_SECONDS:-45}
ns=vus-outage-$$
port=$((20000 + RANDOM % 10000))
ctl=$((100 + RANDOM % 800))
iqn=iqn.2026-11.org.vhost-user-scsi:outage
url=iscsi://127.0.0.1:$port/$iqn/1
target_timeout=30
keepalive=2
passed=0
failed=0
server_pid=
guest_pid=
blocked=0
unblock_pid=

log() { echo "outage: $*"; }
check() {  # check NAME STATUS DETAIL
    if [ "$2" = 0 ]; then
        log "PASS $1 ${3:-}"
        passed=$((passed + 1))
    else
        log "FAIL $1 ${3:-}"
        failed=$((failed + 1))
    fi
}
inns() { ip netns exec "$ns" "$@"; }

cleanup() {
    set +e
    [ -n "$guest_pid" ] && kill "$guest_pid" 2>/dev/null && wait "$guest_pid" 2>/dev/null
    [ -n "$unblock_pid" ] && kill "$unblock_pid" 2>/dev/null && wait "$unblock_pid" 2>/dev/null
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    if ip netns list 2>/dev/null | grep -qw "$ns"; then
        [ "$blocked" = 1 ] && inns iptables -D INPUT -p tcp --dport "$port" -j DROP 2>/dev/null
        inns "$here/tgt.sh" stop "$work/tgt" "$ctl" >/dev/null 2>&1
        ip netns del "$ns"
    fi
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "outage: needs root (network namespace, iptables)"; exit 2; }
command -v iptables >/dev/null || apt-get install -y iptables >&2
"$here/build-guest.sh" "$root/guest/out" >&2

ip netns add "$ns"
inns ip link set lo up
mkdir -p "$work/tgt"
inns "$here/tgt.sh" start "$work/tgt" "$port" "$ctl" "$iqn" lun1.img:128 >&2

sock=$work/vus.sock
# Not through the inns function: $! must be the server itself (ip netns exec execs it).
ip netns exec "$ns" "$server" --socket "$sock" --lun "$url" --num-queues 2 --target-timeout "$target_timeout" \
    --keepalive "$keepalive" --log-level info >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$work/server.log"; log "server did not start"; exit 1; }
log "tgtd and server in network namespace $ns; target $url; --target-timeout $target_timeout --keepalive $keepalive"

# run_scenario NAME ACTION [BEFORE]: runs BEFORE, boots the guest, runs ACTION while fio
# runs, judges the run.
run_scenario() {
    local name=$1 action=$2 before=${3:-} glog=$work/guest-$1.log mark
    mark=$(wc -l <"$work/server.log")
    [ -z "$before" ] || "$before"
    "$here/run-guest.sh" --vhost-user "$sock" --num-queues 2 --workload outage \
        --append "vus.outage_seconds=$fio_seconds" --quiet --timeout 600 --log "$glog" >"$work/guest-$name.out" 2>&1 &
    guest_pid=$!
    local waited=0
    until grep -q 'VUS-INFO outage: fio running' "$glog" 2>/dev/null; do
        if ! kill -0 "$guest_pid" 2>/dev/null || [ $waited -ge 300 ]; then
            check "${name}_guest_started" 1 "(no 'fio running' line; see $glog)"
            wait "$guest_pid" 2>/dev/null || true
            guest_pid=
            return
        fi
        sleep 1
        waited=$((waited + 1))
    done
    sleep 8   # I/O in flight for a while first
    "$action"
    set +e
    wait "$guest_pid"
    local rc=$?
    set -e
    guest_pid=
    log "--- $name: what the guest saw"
    grep -E 'VUS-RESULT|VUS-INFO dmesg|VUS-INFO fio: +(write|WRITE)' "$glog" | sed 's/^/    /' || true
    log "--- $name: what the server logged"
    tail -n +"$((mark + 1))" "$work/server.log" | grep -E 'iscsi:' | sed 's/^/    /' | tail -n 30 || true
    check "${name}_guest_verified" "$rc" "(fio crc32c verify and no I/O error in the guest; log $glog)"
    check "${name}_server_alive" "$(kill -0 "$server_pid" 2>/dev/null; echo $?)"
}

restart_tgtd() {
    log "stopping tgtd"
    local t0=$SECONDS
    inns "$here/tgt.sh" stop "$work/tgt" "$ctl" >&2
    sleep 3
    log "starting tgtd again on the same backing file"
    inns "$here/tgt.sh" start "$work/tgt" "$port" "$ctl" "$iqn" lun1.img:128 >&2
    log "tgtd was away for about $((SECONDS - t0)) s"
}

block_port() {
    local seconds=$((target_timeout / 2))
    log "blocking TCP port $port (DROP) for $seconds s"
    inns iptables -A INPUT -p tcp --dport "$port" -j DROP
    blocked=1
    sleep "$seconds"
    inns iptables -D INPUT -p tcp --dport "$port" -j DROP
    blocked=0
    log "port $port open again"
}

# The port opens again in the background while the guest boots and scans.
block_port_before_boot() {
    log "blocking TCP port $port (DROP) before the guest starts, for 12 s"
    inns iptables -A INPUT -p tcp --dport "$port" -j DROP
    blocked=1
    (sleep 12; inns iptables -D INPUT -p tcp --dport "$port" -j DROP; log "port $port open again") &
    unblock_pid=$!
}

# fio runs, so the first logins succeeded; they must have failed first (the port was blocked).
check_first_logins() {
    wait "$unblock_pid" || true
    unblock_pid=
    blocked=0
    local lines
    lines=$(tail -n +"$((mark + 1))" "$work/server.log")
    check boot_first_login_retried "$(grep -q 'iscsi: login to .* failed .*retrying' <<<"$lines"; echo $?)" \
        "($(grep -c 'iscsi: login to .* failed' <<<"$lines") failed-attempt line(s) logged)"
    check boot_logged_in_in_background "$(grep -qE 'iscsi: logged in to .* after [0-9.]+ s \(attempt [0-9]+\)' <<<"$lines"; echo $?)"
}

for scenario in $scenarios; do
    case "$scenario" in
        restart) run_scenario restart restart_tgtd ;;
        block) run_scenario block block_port ;;
        boot) run_scenario boot check_first_logins block_port_before_boot ;;
        *) check "scenario_$scenario" 1 "(unknown scenario)" ;;
    esac
done

if [[ " $scenarios " == *" restart "* || " $scenarios " == *" block "* ]]; then
    check server_reconnected "$(grep -q 'iscsi: reconnected to' "$work/server.log"; echo $?)" \
        "($(grep -c 'iscsi: reconnected to' "$work/server.log") reconnect(s) logged)"
fi
kill -TERM "$server_pid"
set +e
wait "$server_pid"; rc=$?
set -e
server_pid=
check sigterm_exit_0 "$([ $rc = 0 ]; echo $?)" "(exit $rc)"
check no_crash_in_log "$(! grep -qiE 'fatal error|stack trace|SIGSEGV|precondition' "$work/server.log"; echo $?)"
log "server log: $work/server.log"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
