#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine with Swift on PATH (root: it installs
# the Debian packages it needs). In order:
#   unit + integration   swift test: in-memory ring, protocol, device and hostile-input tests,
#                        the fuzz corpus replay, and the iSCSI initiator against a real tgtd
#   end to end           Scripts/e2e.sh: a QEMU guest on the server, two LUNs, two queues
#   examples             Scripts/examples-test.sh: Examples/ (QEMU and libvirt command lines, the
#                        systemd unit, the configuration file, the migration walk-through) and
#                        the man page, against the real server, tgtd and QEMU
#   hotplug              Scripts/hotplug-test.sh: two controllers from a config file, one guest;
#                        vhost-user-scsi-ctl adds, grows and removes a LUN while it runs;
#                        ctl config, --check, and a SIGHUP reload that adds a LUN
#   reconnect            Scripts/reconnect-test.sh: SIGKILL the server under guest I/O (QEMU 10)
#   migration            Scripts/migrate-test.sh: live migration back and forth with QEMU 10.0,
#                        with a slowed target, and the negative control (data-in logging
#                        switched off in a debug build must make it fail); QEMU 7.2 runs too,
#                        but does not gate: under TCG it corrupts guests on migration even
#                        with its own built-in iSCSI path (Docs/MIGRATION.md)
#   outages              Scripts/outage-test.sh: tgtd restarted and its port blocked under I/O
#   fuzzing              Fuzz/run.sh with a fixed budget per target
#   load generator       vhost-user-scsi-bench --verify against the server
#   security             Scripts/security-test.sh: CHAP and mutual CHAP from secret files and the
#                        environment against a tgtd that demands them, I/O verified through them
# The server is built once in release mode, with the Swift runtime linked in, for all
# end-to-end runs. Each part prints its own
# "N passed, M failed"; the last line sums them up.
#
# Usage: Scripts/test.sh            (VUS_FUZZ_SECONDS, default 30 per target)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root" || exit 1

"$here/install-deps.sh" || exit 1
# A CI job run by systemd must not hand its notify socket to the servers the tests start.
unset NOTIFY_SOCKET
logs=$(mktemp -d /tmp/vus-test.XXXXXX)
suites_passed=0
suites_failed=0
failed_names=()

informational=()
run_informational() {  # like run_suite, but the result is reported, not counted
    local name=$1
    shift
    local start=$SECONDS
    echo "== $name (informational)" >&2
    "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    grep -E "PASS|FAIL|passed" "$logs/$name.log" | tail -40
    informational+=("$name: $([ $rc = 0 ] && echo pass || echo "fail (exit $rc)")")
    echo "== $name: exit $rc in $((SECONDS - start)) s (informational; log $logs/$name.log)" >&2
}

run_suite() {  # run_suite NAME COMMAND...
    local name=$1
    shift
    local start=$SECONDS
    echo "== $name" >&2
    if "$@" 2>&1 | tee "$logs/$name.log" | grep -vE '^\[[0-9]+/[0-9]+\] |^(✔|◇|↳) |^Test Case .* (started|passed)'; then :; fi
    local rc=${PIPESTATUS[0]}
    if [ "$rc" = 0 ]; then
        suites_passed=$((suites_passed + 1))
        echo "== $name: PASS in $((SECONDS - start)) s" >&2
    else
        suites_failed=$((suites_failed + 1))
        failed_names+=("$name")
        echo "== $name: FAIL (exit $rc) in $((SECONDS - start)) s; log $logs/$name.log" >&2
    fi
}

"$here/build-guest.sh" "$root/guest/out" >"$logs/build-guest.log" 2>&1 &
guest_pid=$!
"$here/qemu10.sh" >"$logs/qemu10.log" 2>&1 &
qemu10_pid=$!

run_suite unit-and-integration swift test
wait "$guest_pid" || { cat "$logs/build-guest.log"; exit 1; }
wait "$qemu10_pid" || { cat "$logs/qemu10.log"; exit 1; }
qemu10=$(tail -1 "$logs/qemu10.log")

# With the Swift runtime linked in, as Docs/OPERATIONS.md installs it: the end-to-end suites
# test the binary operators run.
echo "== release build" >&2
swift build -c release --static-swift-stdlib 2>&1 | tail -1
bin=$(swift build -c release --static-swift-stdlib --show-bin-path)
debug_bin=$(swift build --show-bin-path)/vhost-user-scsi
swift build --product vhost-user-scsi 2>&1 | tail -1

run_suite end-to-end "$here/e2e.sh" "$bin/vhost-user-scsi"
run_suite examples "$here/examples-test.sh" "$bin" --qemu "$qemu10"
run_suite hotplug "$here/hotplug-test.sh" "$bin"
run_suite reconnect "$here/reconnect-test.sh" "$bin/vhost-user-scsi" --qemu "$qemu10"
run_suite migration-qemu10 "$here/migrate-test.sh" "$bin/vhost-user-scsi" --qemu "$qemu10" --rounds 3
run_suite migration-qemu10-slow-target "$here/migrate-test.sh" "$bin/vhost-user-scsi" --qemu "$qemu10" \
    --rounds 2 --slow-target
# The test must catch the bug it exists for: without data-in logging, migration corrupts.
run_suite migration-catches-missing-logging \
    "$here/expect-failure.sh" "$here/migrate-test.sh" "$debug_bin" --qemu "$qemu10" --rounds 2 \
    --server-env VUS_DEBUG_SKIP_DATA_IN_LOGGING=1
run_informational migration-qemu7 "$here/migrate-test.sh" "$bin/vhost-user-scsi" --rounds 2
run_suite outages "$here/outage-test.sh" "$bin/vhost-user-scsi"
run_suite fuzzing env FUZZ_NO_CORPUS_UPDATE=1 "$root/Fuzz/run.sh" all "${VUS_FUZZ_SECONDS:-30}"
run_suite load-generator-verify "$here/bench-verify.sh" "$bin"
run_suite security "$here/security-test.sh" "$bin"

for line in "${informational[@]}"; do echo "== informational: $line" >&2; done
echo "== suites that failed: ${failed_names[*]:-none}; logs in $logs" >&2
echo "$suites_passed passed, $suites_failed failed"
[ "$suites_failed" = 0 ]
