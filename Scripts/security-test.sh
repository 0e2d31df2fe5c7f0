#!/usr/bin/env bash
# The server's iSCSI login security end to end (Docs/SECURITY.md): a private tgtd that demands
# CHAP (then mutual CHAP), the server given its secrets through a file or the environment,
# and the load generator writing and verifying data through it.
#
# Usage: Scripts/security-test.sh BIN_DIR   (holding vhost-user-scsi and vhost-user-scsi-bench)
# Prints "N passed, M failed"; exits non-zero if anything failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(realpath "${1:?usage: Scripts/security-test.sh BIN_DIR}")
work=$(mktemp -d /tmp/vus-security.XXXXXX)
port=$((20000 + RANDOM % 10000))
ctl=$((100 + RANDOM % 800))
iqn=iqn.2026-11.org.vhost-user-scsi:security
url=iscsi://127.0.0.1:$port/$iqn/1
secret=vus-initiator-secret-1
target_secret=vus-target-secret-22
passed=0
failed=0
server_pid=

check() {  # check NAME CONDITION-RESULT DETAIL
    if [ "$2" = 0 ]; then echo "security: PASS $1 ${3:-}"; passed=$((passed + 1))
    else echo "security: FAIL $1 ${3:-}"; failed=$((failed + 1)); fi
}
stop_server() {
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    server_pid=
}
cleanup() {
    stop_server
    "$here/tgt.sh" stop "$work/tgt" "$ctl" >/dev/null 2>&1 || true
}
trap cleanup EXIT
tadm() { tgtadm -C "$ctl" --lld iscsi "$@"; }

# start_server ARGS...: runs the server in the background; 0 once its socket is there.
start_server() {
    rm -f "$work/vus.sock"
    "$bin/vhost-user-scsi" --socket "$work/vus.sock" --lun "$url" --num-queues 1 "$@" >"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        [ -S "$work/vus.sock" ] && return 0
        kill -0 "$server_pid" 2>/dev/null || { wait "$server_pid"; server_pid=; return 1; }
        sleep 0.1
    done
    return 1
}
# run_server ARGS...: a start that must fail; prints the exit status.
run_server() {
    timeout 60 "$bin/vhost-user-scsi" --socket "$work/vus.sock" --lun "$url" "$@" >"$work/server.log" 2>&1
    echo $?
}
verify_io() {
    "$bin/vhost-user-scsi-bench" --socket "$work/vus.sock" --queues 1 --iodepth 8 --bs 4k --rw randwrite \
        --runtime 2 --ramp 0 --verify >"$work/bench.out" 2>&1
}

mkdir -p "$work/tgt"
"$here/tgt.sh" start "$work/tgt" "$port" "$ctl" "$iqn" lun1.img:32 >&2
tadm --op new --mode account --user vus-host --password "$secret"
tadm --op bind --mode account --tid 1 --user vus-host
printf '%s\n' "$secret" >"$work/chap.secret"
chmod 600 "$work/chap.secret"

# --- one-way CHAP ---------------------------------------------------------------------------
rc=$(run_server)
check chap_required_refused "$([ "$rc" = 1 ] && grep -q "CHAP" "$work/server.log"; echo $?)" "exit $rc: $(tail -1 "$work/server.log")"

printf 'wrong-secret-1234\n' >"$work/wrong.secret"; chmod 600 "$work/wrong.secret"
rc=$(run_server --chap-user vus-host --chap-secret-file "$work/wrong.secret")
check wrong_secret_refused "$([ "$rc" = 1 ] && ! grep -q wrong-secret "$work/server.log"; echo $?)" "exit $rc: $(tail -1 "$work/server.log")"

chmod 644 "$work/wrong.secret"
rc=$(run_server --chap-user vus-host --chap-secret-file "$work/wrong.secret")
check world_readable_secret_refused "$([ "$rc" = 2 ] && grep -q "chmod" "$work/server.log"; echo $?)" "exit $rc: $(tail -1 "$work/server.log")"

if start_server --chap-user vus-host --chap-secret-file "$work/chap.secret"; then
    verify_io; rc=$?
    check chap_secret_file_io "$rc" "$(grep -E 'IOPS|verif' "$work/bench.out" | head -2 | tr '\n' ' ')"
    check secret_not_on_command_line "$(! tr '\0' ' ' <"/proc/$server_pid/cmdline" | grep -q "$secret"; echo $?)"
    check secret_not_in_log "$(! grep -q "$secret" "$work/server.log"; echo $?)"
    default_name=$(sed -n 's/.*initiator \(iqn[^ ;,]*\).*/\1/p' "$work/server.log" | head -1)
    check default_initiator_name_unique "$(echo "$default_name" | grep -qE '^iqn\.2026-11\.org\.vhost-user-scsi:[a-z0-9.-]+-[0-9a-f]{8}$'; echo $?)" "$default_name"
    stop_server
else
    check chap_secret_file_io 1 "server did not start: $(tail -2 "$work/server.log")"
fi

if VUS_CHAP_SECRET="$secret" start_server --chap-user vus-host --chap-secret-env VUS_CHAP_SECRET --header-digest prefer-crc32c; then
    verify_io; rc=$?
    check chap_secret_env_io "$rc" "(with --header-digest prefer-crc32c)"
    stop_server
else
    check chap_secret_env_io 1 "server did not start: $(tail -2 "$work/server.log")"
fi

# --- mutual CHAP: the target must prove itself too ---------------------------------------
tadm --op new --mode account --user vus-target --password "$target_secret"
tadm --op bind --mode account --tid 1 --user vus-target --outgoing
printf '%s\n' "$target_secret" >"$work/target.secret"; chmod 600 "$work/target.secret"
if start_server --chap-user vus-host --chap-secret-file "$work/chap.secret" \
        --mutual-chap-user vus-target --mutual-chap-secret-file "$work/target.secret"; then
    verify_io; rc=$?
    check mutual_chap_io "$rc"
    stop_server
else
    check mutual_chap_io 1 "server did not start: $(tail -2 "$work/server.log")"
fi
printf 'not-the-target-secret\n' >"$work/bad-target.secret"; chmod 600 "$work/bad-target.secret"
rc=$(run_server --chap-user vus-host --chap-secret-file "$work/chap.secret" \
        --mutual-chap-user vus-target --mutual-chap-secret-file "$work/bad-target.secret")
check impostor_target_refused "$([ "$rc" = 1 ]; echo $?)" "exit $rc: $(tail -1 "$work/server.log")"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
