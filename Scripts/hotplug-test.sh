#!/usr/bin/env bash
# End-to-end test of operating a running server: one process, two controllers from a JSON
# configuration file, one guest with a vhost-user-scsi-pci device on each; while the guest
# runs, vhost-user-scsi-ctl adds a LUN, grows it and removes it, and the guest sees each
# change through the virtio-scsi event queue (guest workload "hotplug", Docs/GUEST.md).
# Also checks the control socket's answers, `stats` and the Prometheus endpoint.
#
# Usage: Scripts/hotplug-test.sh BIN_DIR [WORKDIR]
#   BIN_DIR holds vhost-user-scsi and vhost-user-scsi-ctl (e.g. swift build -c release --show-bin-path)
# Prints "N passed, M failed" at the end; exits non-zero if anything failed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=$(realpath "${1:?usage: Scripts/hotplug-test.sh BIN_DIR [WORKDIR]}")
work=${2:-$(mktemp -d /tmp/vus-hotplug.XXXXXX)}
mkdir -p "$work"
port=$((20000 + RANDOM % 10000))
ctlport=$((100 + RANDOM % 800))
metrics_port=$((30000 + RANDOM % 10000))
iqn=iqn.2026-11.org.vhost-user-scsi:hotplug
url() { echo "iscsi://127.0.0.1:$port/$iqn/$1"; }
ctl() { "$bin/vhost-user-scsi-ctl" --control-socket "$work/control.sock" "$@"; }
passed=0
failed=0
server_pid=
guest_pid=

check() {  # check NAME CONDITION-RESULT DETAIL
    if [ "$2" = 0 ]; then
        echo "hotplug: PASS $1 ${3:-}"
        passed=$((passed + 1))
    else
        echo "hotplug: FAIL $1 ${3:-}"
        failed=$((failed + 1))
    fi
}

cleanup() {
    [ -n "$guest_pid" ] && kill "$guest_pid" 2>/dev/null && wait "$guest_pid" 2>/dev/null || true
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    "$here/tgt.sh" stop "$work/tgt" "$ctlport" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# wait_for_line FILE PATTERN SECONDS: until a line of FILE matches (grep -E).
wait_for_line() {
    local i
    for i in $(seq $(($3 * 10))); do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

"$here/build-guest.sh" "$root/guest/out" >&2
mkdir -p "$work/tgt"
# LUN 3 is the one added at runtime; it grows from 32 to 48 MiB.
"$here/tgt.sh" start "$work/tgt" "$port" "$ctlport" "$iqn" vm1.img:64 vm2.img:32 extra.img:32 >&2

cat >"$work/config.json" <<JSON
{
  "log_level": "info",
  "control_socket": "$work/control.sock",
  "metrics_listen": "127.0.0.1:$metrics_port",
  "controllers": [
    { "name": "vm1", "socket": "$work/vm1.sock", "num_queues": 2, "luns": ["$(url 1)"] },
    { "name": "vm2", "socket": "$work/vm2.sock", "num_queues": 1, "luns": [{ "address": "0:0", "url": "$(url 2)" }] }
  ]
}
JSON
"$bin/vhost-user-scsi" --config "$work/config.json" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do [ -S "$work/control.sock" ] && break; sleep 0.1; done
[ -S "$work/control.sock" ] || { cat "$work/server.log"; echo "hotplug: server did not start"; exit 1; }

set +e
listed=$(ctl --json list)
check list_two_controllers "$(echo "$listed" | python3 -c '
import json, sys
r = json.load(sys.stdin)
names = [c["name"] for c in r["controllers"]]
luns = [[l["address"] for l in c["luns"]] for c in r["controllers"]]
sys.exit(0 if r["ok"] and names == ["vm1", "vm2"] and luns == [["0:0"], ["0:0"]] else 1)'; echo $?)" "$listed"
ctl add-lun nope 0:1 "$(url 3)" >"$work/ctl.out" 2>&1; rc=$?
check ctl_unknown_controller "$([ $rc = 1 ] && grep -q "no controller named 'nope'" "$work/ctl.out"; echo $?)" "exit $rc: $(cat "$work/ctl.out")"
ctl add-lun vm1 0:1 "iscsi://127.0.0.1:$port/$iqn/9" >"$work/ctl.out" 2>&1; rc=$?
check ctl_add_missing_lun_refused "$([ $rc = 1 ]; echo $?)" "exit $rc: $(cat "$work/ctl.out")"
ctl add-lun vm1 0:0 "$(url 3)" >"$work/ctl.out" 2>&1; rc=$?
check ctl_add_taken_address_refused "$([ $rc = 1 ]; echo $?)" "exit $rc: $(cat "$work/ctl.out")"
ctl --json resize-lun vm1 0:0 >"$work/ctl.out" 2>&1; rc=$?
check ctl_resize_unchanged "$([ $rc = 0 ] && grep -q '"guest":"unchanged"' "$work/ctl.out"; echo $?)" "$(cat "$work/ctl.out")"

"$here/run-guest.sh" --vhost-user "$work/vm1.sock" --vhost-user "$work/vm2.sock" --num-queues 1 \
    --workload hotplug --append vus.expect_luns=2 --quiet --timeout 600 --log "$work/guest.log" >"$work/guest.out" 2>&1 &
guest_pid=$!

if wait_for_line "$work/guest.log" "VUS-INFO hotplug: ready" 300; then
    ctl list | sed 's/^/hotplug: list: /'
    ctl --json list vm1 | grep -q '"address":"0:0","block_size":512,"blocks":131072,"product":"VIRTUAL-DISK","state":"up"'
    check list_lun_state_up "$?" "(the guest is connected: its sessions are logged in)"
    ctl add-lun vm1 0:1 "$(url 3)" >"$work/ctl.out" 2>&1; rc=$?
    check ctl_add_lun "$rc" "$(cat "$work/ctl.out")"
    ctl --json list vm1 | grep -q '"address":"0:1"'
    check list_shows_added "$?"
    if wait_for_line "$work/guest.log" "VUS-INFO hotplug: added|hotplug_added FAIL" 150; then
        # Grow the LUN at the target: tgtd reads a backing file's size when the LUN is created.
        truncate -s 48M "$work/tgt/extra.img"
        tgtadm -C "$ctlport" --lld iscsi --op delete --mode logicalunit --tid 1 --lun 3 &&
            tgtadm -C "$ctlport" --lld iscsi --op new --mode logicalunit --tid 1 --lun 3 -b "$work/tgt/extra.img"
        ctl resize-lun vm1 0:1 >"$work/ctl.out" 2>&1; rc=$?
        check ctl_resize_lun "$rc" "$(cat "$work/ctl.out")"
        if wait_for_line "$work/guest.log" "VUS-INFO hotplug: resized" 150; then
            ctl remove-lun vm1 0:1 >"$work/ctl.out" 2>&1; rc=$?
            check ctl_remove_lun "$rc" "$(cat "$work/ctl.out")"
            ctl --json list vm1 | grep -q '"address":"0:1"'
            check list_omits_removed "$([ $? != 0 ]; echo $?)"
        fi
    fi
else
    check guest_ready 1 "(no 'hotplug: ready' from the guest; log $work/guest.log)"
fi

wait "$guest_pid"; rc=$?
guest_pid=
grep -E "VUS-RESULT|VUS-DONE" "$work/guest.log" | sed 's/^/hotplug: guest: /'
check guest_hotplug "$rc" "($(grep -c 'VUS-RESULT .* PASS' "$work/guest.log") guest checks passed; log $work/guest.log)"

# What the guest did shows in the counters, per controller, on both interfaces.
python3 - "$metrics_port" >"$work/metrics.out" 2>&1 <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
reads = {}
for line in text.splitlines():
    if line.startswith('vhost_user_scsi_requests_total{') and 'kind="read"' in line:
        controller = line.split('controller="')[1].split('"')[0]
        reads[controller] = reads.get(controller, 0) + float(line.rsplit(" ", 1)[1])
print("reads per controller:", reads)
sys.exit(0 if reads.get("vm1", 0) > 0 and reads.get("vm2", 0) > 0 else 1)
PY
check metrics_per_controller "$?" "$(cat "$work/metrics.out")"
ctl --json stats vm1 >"$work/stats.json"
check ctl_stats "$(python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))["controllers"][0]
sys.exit(0 if c["name"] == "vm1" and c["totals"]["requests"]["read"] > 0 and c["totals"]["bytes_written"] > 0 else 1)' "$work/stats.json"; echo $?)" \
    "$(ctl stats vm1 | head -1)"

kill -TERM "$server_pid"
wait "$server_pid"; rc=$?
server_pid=
set -e
check sigterm_exit_0 "$([ $rc = 0 ] && grep -q 'shut down cleanly' "$work/server.log"; echo $?)" "exit $rc"
check no_crash_in_log "$(! grep -qiE 'fatal error|stack trace|SIGSEGV|precondition' "$work/server.log"; echo $?)"
check sockets_removed "$([ ! -e "$work/vm1.sock" ] && [ ! -e "$work/vm2.sock" ] && [ ! -e "$work/control.sock" ]; echo $?)"

echo "hotplug: server log: $work/server.log"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
