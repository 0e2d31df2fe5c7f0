#!/usr/bin/env bash
# End-to-end test of operating a running server: one process, two controllers from a JSON
# configuration file, one guest with a vhost-user-scsi-pci device on each; while the guest
# runs, vhost-user-scsi-ctl adds a LUN, grows it and removes it, and the guest sees each
# change through the virtio-scsi event queue (guest workload "hotplug", Docs/GUEST.md).
# Also checks the control socket's answers, `stats` and the Prometheus endpoint, that
# `ctl config` writes a configuration the server accepts (and `--check` probes without
# serving), and that SIGHUP applies a changed configuration file's LUNs without a restart (the
# guest sees the added disk) and survives a broken one. Controllers come and go at runtime too:
# `ctl add-controller` / `remove-controller` (refused while a frontend is connected, unless
# --force) and a reload that adds and removes one; vhost-user-scsi-bench is their frontend.
#
# Usage: Scripts/hotplug-test.sh BIN_DIR [WORKDIR]
#   BIN_DIR holds vhost-user-scsi, vhost-user-scsi-ctl and vhost-user-scsi-bench
#   (e.g. swift build -c release --show-bin-path)
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
bench_pid=

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
    [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null && wait "$bench_pid" 2>/dev/null || true
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
# LUN 3 is the one added at runtime; it grows from 32 to 48 MiB. LUN 4 is added to vm2 by
# editing the configuration file and sending SIGHUP. LUN 5 is controller vm3's (added with
# ctl add-controller), LUN 6 controller vm4's (added by a reload).
"$here/tgt.sh" start "$work/tgt" "$port" "$ctlport" "$iqn" vm1.img:64 vm2.img:32 extra.img:32 reload.img:16 \
    vm3.img:32 vm4.img:16 >&2

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
# A SIGHUP while the server still probes its LUNs (tgtd held with SIGSTOP: the probe waits)
# must not end it; it starts with the file as read.
tgtd_pid=$(cat "$work/tgt/tgtd.pid")
kill -STOP "$tgtd_pid"
"$bin/vhost-user-scsi" --config "$work/config.json" >"$work/server.log" 2>&1 &
server_pid=$!
sleep 0.5
kill -HUP "$server_pid"
sleep 0.3
alive=0
kill -0 "$server_pid" 2>/dev/null || alive=1
kill -CONT "$tgtd_pid"
check sighup_during_startup_ignored "$alive" "$(tail -n 2 "$work/server.log" | tr '\n' '|')"
for _ in $(seq 100); do [ -S "$work/control.sock" ] && break; sleep 0.1; done
[ -S "$work/control.sock" ] || { cat "$work/server.log"; echo "hotplug: server did not start"; exit 1; }
# At start, one line per LUN: the probes' own login and logout lines are at debug level.
startup=$(sed -n '1,/ serving /p' "$work/server.log")
check startup_one_line_per_lun "$([ "$(grep -c ': guest 0:0 = ' <<<"$startup")" = 2 ] &&
    ! grep -qE 'iscsi: (logged in|closed session)' <<<"$startup"; echo $?)" "$(tr '\n' '|' <<<"$startup" | head -c 600)"

# `ctl config` (the running configuration in the file's format) has the LUN added at runtime,
# no secret, and is a configuration the server itself accepts: a second server started from it
# (its sockets moved) probes every LUN and comes up. Checked while the first one serves.
check_config_command() {
    local rc check_pid
    ctl config >"$work/dumped.json" 2>"$work/ctl.out"; rc=$?
    check ctl_config "$(python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))
luns = {x["name"]: x["luns"] for x in c["controllers"]}
ok = (luns["vm1"] == [{"address": "0:0", "url": sys.argv[2]}, {"address": "0:1", "url": sys.argv[3]}]
      and luns["vm2"] == [{"address": "0:0", "url": sys.argv[4]}]
      and c["control_socket"] == sys.argv[5] and "initiator_name" not in c)
sys.exit(0 if ok else 1)' "$work/dumped.json" "$(url 1)" "$(url 3)" "$(url 2)" "$work/control.sock"; echo $?)" \
        "exit $rc: $(tr -d ' \n' <"$work/dumped.json" | head -c 600) $(cat "$work/ctl.out")"
    check ctl_config_no_secret "$(! grep -qiE '%|secret|password' "$work/dumped.json"; echo $?)"
    python3 - "$work" "$work/dumped.json" >"$work/check.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[2]))
c["control_socket"] = sys.argv[1] + "/check-control.sock"
c.pop("metrics_listen", None)
for controller in c["controllers"]:
    controller["socket"] = sys.argv[1] + "/check-" + controller["name"] + ".sock"
json.dump(c, sys.stdout)
PY
    # --check: the same file probed without serving (exit 0, every LUN listed, no socket);
    # with one LUN pointing at a missing target LUN, exit 1 naming it.
    "$bin/vhost-user-scsi" --config "$work/check.json" --check >"$work/check-mode.out" 2>&1; rc=$?
    check check_mode_ok "$([ $rc = 0 ] && [ "$(grep -c ' = iscsi://.*blocks of 512 bytes' "$work/check-mode.out")" = 3 ] &&
        grep -q '^configuration OK: 2 controller(s), 3 LUN(s)' "$work/check-mode.out" &&
        ! [ -e "$work/check-control.sock" ] && ! [ -e "$work/check-vm1.sock" ]; echo $?)" \
        "exit $rc: $(tr '\n' '|' <"$work/check-mode.out")"
    python3 - "$work/check.json" "iscsi://127.0.0.1:$port/$iqn/9" >"$work/check-bad.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["controllers"][1]["luns"].append({"address": "0:7", "url": sys.argv[2]})
json.dump(c, sys.stdout)
PY
    "$bin/vhost-user-scsi" --config "$work/check-bad.json" --check >"$work/check-mode.out" 2>&1; rc=$?
    check check_mode_names_bad_lun "$([ $rc = 1 ] && grep -q '^  0:7 = .*/9: FAILED: ' "$work/check-mode.out" &&
        grep -q '^configuration NOT OK: 1 of 4 LUN(s)' "$work/check-mode.out"; echo $?)" \
        "exit $rc: $(tr '\n' '|' <"$work/check-mode.out")"
    "$bin/vhost-user-scsi" --config "$work/check.json" >"$work/check.log" 2>&1 &
    check_pid=$!
    for _ in $(seq 300); do
        { [ -S "$work/check-control.sock" ] || ! kill -0 "$check_pid" 2>/dev/null; } && break
        sleep 0.1
    done
    "$bin/vhost-user-scsi-ctl" --control-socket "$work/check-control.sock" --json list >"$work/check-list.json" 2>&1
    check config_starts_a_server "$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
luns = [[l["address"] for l in c["luns"]] for c in r["controllers"]]
sys.exit(0 if luns == [["0:0", "0:1"], ["0:0"]] else 1)' "$work/check-list.json"; echo $?)" \
        "$(cat "$work/check-list.json"; tail -n 3 "$work/check.log")"
    kill -TERM "$check_pid" 2>/dev/null
    wait "$check_pid"; rc=$?
    check config_server_stops "$([ $rc = 0 ]; echo $?)" "exit $rc"
}

# edit_config PYTHON: runs PYTHON with `c` the configuration file's JSON, then writes it back.
edit_config() {
    python3 - "$work/config.json" "$1" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
exec(sys.argv[2])
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
}

# reload_and_wait NAME PATTERN: SIGHUP the server and wait for PATTERN in its log.
reload_and_wait() {
    kill -HUP "$server_pid"
    wait_for_line "$work/server.log" "$2" 60
    check "$1" "$?" "$(grep -E 'reload' "$work/server.log" | tail -n 4 | tr '\n' '|')"
}

# SIGHUP while the guest runs: vm2 gets LUN 4 at 0:1 from the file; nothing else changed.
# The guest (vus.hotplug_reload=1) must see the disk and do I/O on it.
reload_adds_lun() {
    edit_config "c['controllers'][1]['luns'].append({'address': '0:1', 'url': '$(url 4)'})"
    reload_and_wait reload_adds_lun "reload: 1 added, 0 removed, 2 unchanged, 0 not applied"
    grep -qE "reload: vm2: added 0:1 = $(url 4); guest delivered" "$work/server.log"
    check reload_tells_guest "$?" "$(grep 'reload: vm2: added' "$work/server.log")"
    ctl --json list vm2 >"$work/ctl.out" 2>&1
    check reload_list_shows_lun "$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if [(l["address"], l["url"]) for l in r["controllers"][0]["luns"]] == [("0:0", sys.argv[2]), ("0:1", sys.argv[3])] else 1)' \
        "$work/ctl.out" "$(url 2)" "$(url 4)"; echo $?)" "$(cat "$work/ctl.out")"
}

# is_connected NAME: whether `ctl list` says a frontend is connected to controller NAME.
is_connected() {
    ctl --json list "$1" 2>/dev/null | python3 -c '
import json, sys
sys.exit(0 if json.load(sys.stdin)["controllers"][0]["connected"] else 1)'
}

# wait_connected NAME: until a frontend is connected to NAME (30 s).
wait_connected() {
    local i
    for i in $(seq 300); do is_connected "$1" && return 0; sleep 0.1; done
    return 1
}

# The load generator as the frontend, writing and verifying: "${bench[@]}" --socket S --runtime N.
# Called directly (not through a function) when in the background, so $! is its pid.
bench=("$bin/vhost-user-scsi-bench" --queues 2 --iodepth 8 --bs 4k --rw randwrite --ramp 0 --verify)

# list_names: the controllers `ctl list` shows, space-separated.
list_names() {
    ctl --json list | python3 -c '
import json, sys
print(" ".join(c["name"] for c in json.load(sys.stdin)["controllers"]))'
}

# A controller for a new VM without a restart: added, served (real I/O through the load
# generator), scraped, refused removal while its frontend is connected, removed with --force.
controller_at_runtime() {
    local rc
    ctl add-controller vm3 "$work/vm3.sock" --num-queues 2 --lun "$(url 5)" >"$work/ctl.out" 2>&1; rc=$?
    check ctl_add_controller "$([ $rc = 0 ] && [ -S "$work/vm3.sock" ]; echo $?)" "exit $rc: $(cat "$work/ctl.out")"
    ctl --json list >"$work/ctl.out" 2>&1
    check list_shows_added_controller "$(python3 -c '
import json, sys
c = {c["name"]: c for c in json.load(open(sys.argv[1]))["controllers"]}
vm3 = c.get("vm3", {})
ok = (list(c) == ["vm1", "vm2", "vm3"] and vm3["request_queues"] == 2 and vm3["socket"] == sys.argv[2]
      and [(l["address"], l["url"]) for l in vm3["luns"]] == [("0:0", sys.argv[3])])
sys.exit(0 if ok else 1)' "$work/ctl.out" "$work/vm3.sock" "$(url 5)"; echo $?)" "$(cat "$work/ctl.out")"
    ctl add-controller vm3 "$work/vm3b.sock" >"$work/ctl.out" 2>&1; rc=$?
    check ctl_add_controller_taken_name "$([ $rc = 1 ] && grep -q "a controller named 'vm3' is served already" "$work/ctl.out"; echo $?)" \
        "exit $rc: $(cat "$work/ctl.out")"
    ctl add-controller vm5 "$work/vm5.sock" --lun "iscsi://127.0.0.1:$port/$iqn/9" >"$work/ctl.out" 2>&1; rc=$?
    check ctl_add_controller_bad_lun "$([ $rc = 1 ] && ! [ -e "$work/vm5.sock" ] && [ "$(list_names)" = "vm1 vm2 vm3" ]; echo $?)" \
        "exit $rc: $(cat "$work/ctl.out")"

    "${bench[@]}" --socket "$work/vm3.sock" --runtime 2 >"$work/bench.out" 2>&1; rc=$?
    check added_controller_serves_io "$rc" "$(tail -n 3 "$work/bench.out" | tr '\n' '|')"
    python3 - "$metrics_port" >"$work/metrics.out" 2>&1 <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
writes = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
             if l.startswith("vhost_user_scsi_requests_total{") and 'controller="vm3"' in l and 'kind="write"' in l)
print("vm3 writes:", writes)
sys.exit(0 if writes > 0 else 1)
PY
    check metrics_added_controller "$?" "$(cat "$work/metrics.out")"

    "${bench[@]}" --socket "$work/vm3.sock" --runtime 60 >"$work/bench.out" 2>&1 &
    bench_pid=$!
    wait_connected vm3
    check bench_connected "$?"
    ctl remove-controller vm3 >"$work/ctl.out" 2>&1; rc=$?
    check remove_connected_refused "$([ $rc = 1 ] &&
        grep -q 'controller vm3 has a VM connected; stop the VM first, or force' "$work/ctl.out" && [ -S "$work/vm3.sock" ]; echo $?)" \
        "exit $rc: $(cat "$work/ctl.out")"
    ctl remove-controller vm3 --force >"$work/ctl.out" 2>&1; rc=$?
    check remove_forced "$rc" "$(cat "$work/ctl.out")"
    # The bench sees the connection end and exits (with its failure: the backend went away).
    for _ in $(seq 100); do kill -0 "$bench_pid" 2>/dev/null || break; sleep 0.1; done
    rc=0
    kill -0 "$bench_pid" 2>/dev/null && { rc=1; kill "$bench_pid"; }
    wait "$bench_pid"
    bench_pid=
    check forced_remove_ends_frontend "$rc" "$(tail -n 2 "$work/bench.out" | tr '\n' '|')"
    check removed_socket_gone "$([ ! -e "$work/vm3.sock" ]; echo $?)"
    check list_omits_removed_controller "$([ "$(list_names)" = "vm1 vm2" ]; echo $?)" "$(list_names)"
}

# A reload adds a controller the file gained (I/O through it), keeps one the file lost while a
# frontend is connected, and removes it once none is. The file has keepalive 7 by now: one
# setting not applied in every summary.
controllers_by_reload() {
    local rc
    edit_config "c['controllers'].append({'name': 'vm4', 'socket': '$work/vm4.sock', 'num_queues': 2, 'luns': ['$(url 6)']})"
    reload_and_wait reload_adds_controller \
        "reload: 1 controller added, 0 controllers removed, 0 added, 0 removed, 3 unchanged, 1 not applied"
    check reload_list_shows_controller "$([ "$(list_names)" = "vm1 vm2 vm4" ]; echo $?)" "$(list_names)"
    "${bench[@]}" --socket "$work/vm4.sock" --runtime 2 >"$work/bench.out" 2>&1; rc=$?
    check reload_added_controller_serves_io "$rc" "$(tail -n 3 "$work/bench.out" | tr '\n' '|')"

    "${bench[@]}" --socket "$work/vm4.sock" --runtime 60 >"$work/bench.out" 2>&1 &
    bench_pid=$!
    wait_connected vm4
    check bench_connected_vm4 "$?"
    edit_config "c['controllers'] = [x for x in c['controllers'] if x['name'] != 'vm4']"
    reload_and_wait reload_keeps_connected_controller "reload: 0 added, 0 removed, 3 unchanged, 2 not applied"
    grep -q "controller vm4: removed from the file but a VM is connected; not removed" "$work/server.log"
    check reload_connected_warning "$?"
    check reload_connected_still_served "$(is_connected vm4; echo $?)"
    kill "$bench_pid" 2>/dev/null
    wait "$bench_pid" 2>/dev/null
    bench_pid=
    for _ in $(seq 100); do is_connected vm4 || break; sleep 0.1; done
    reload_and_wait reload_removes_controller \
        "reload: 0 controllers added, 1 controller removed, 0 added, 0 removed, 3 unchanged, 1 not applied"
    check reload_removed_socket_gone "$([ ! -e "$work/vm4.sock" ] && [ "$(list_names)" = "vm1 vm2" ]; echo $?)" "$(list_names)"
}

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
    --workload hotplug --append vus.expect_luns=2 --append vus.hotplug_reload=1 --quiet --timeout 600 --log "$work/guest.log" >"$work/guest.out" 2>&1 &
guest_pid=$!

if wait_for_line "$work/guest.log" "VUS-INFO hotplug: ready" 300; then
    ctl list | sed 's/^/hotplug: list: /'
    ctl --json list vm1 | grep -q '"address":"0:0","block_size":512,"blocks":131072,"product":"VIRTUAL-DISK","state":"up"'
    check list_lun_state_up "$?" "(the guest is connected: its sessions are logged in)"
    ctl add-lun vm1 0:1 "$(url 3)" >"$work/ctl.out" 2>&1; rc=$?
    check ctl_add_lun "$rc" "$(cat "$work/ctl.out")"
    ctl --json list vm1 | grep -q '"address":"0:1"'
    check list_shows_added "$?"
    check_config_command
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
            wait_for_line "$work/guest.log" "VUS-INFO hotplug: removed" 150 && reload_adds_lun
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

controller_at_runtime

# A global setting is only applied by a restart: named, not applied.
edit_config "c['keepalive'] = 7"
reload_and_wait reload_names_restart_setting "reload: 0 added, 0 removed, 3 unchanged, 1 not applied"
grep -q "reload: keepalive changed: takes effect at restart" "$work/server.log"
check reload_restart_warning "$?"
controllers_by_reload
# A broken file: one error line, nothing changes, the server keeps serving.
echo '{ "controllers": [ broken' >"$work/config.json"
reload_and_wait reload_broken_file_logged "reload: .*config.json.*nothing changed"
ctl --json list vm2 | grep -q '"address":"0:1"'
check reload_broken_file_keeps_serving "$?"

kill -TERM "$server_pid"
wait "$server_pid"; rc=$?
server_pid=
set -e
check sigterm_exit_0 "$([ $rc = 0 ] && grep -q 'shut down cleanly' "$work/server.log"; echo $?)" "exit $rc"
check no_crash_in_log "$(! grep -qiE 'fatal error|stack trace|SIGSEGV|precondition' "$work/server.log"; echo $?)"
check sockets_removed "$([ ! -e "$work/vm1.sock" ] && [ ! -e "$work/vm2.sock" ] && [ ! -e "$work/control.sock" ] &&
    [ ! -e "$work/vm3.sock" ] && [ ! -e "$work/vm4.sock" ]; echo $?)"

echo "hotplug: server log: $work/server.log"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
