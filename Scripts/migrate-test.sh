#!/usr/bin/env bash
# End-to-end live-migration test (Docs/MIGRATION.md): one tgtd with one LUN, a guest running
# the `migrate` workload (a checksummed pattern written and verified continuously, fio with
# crc32c verify, data kept in RAM), migrated back and forth between QEMU processes on this
# machine, each with its own vhost-user-scsi server (own socket, own initiator name) attached to
# the same LUN. Afterwards the host reads the LUN's backing file and checks every written block.
#
# Usage: Scripts/migrate-test.sh SERVER_BINARY [options]
#        Scripts/migrate-test.sh --builtin-iscsi [options]
#   --builtin-iscsi        no server: QEMU's own virtio-scsi-pci + iSCSI driver on both sides
#                          (validates the test itself; shared-storage migration works there)
#   --qemu PATH            QEMU binary (default qemu-system-x86_64; Scripts/qemu10.sh writes
#                          a wrapper for QEMU 10.0: guest/out/qemu10/qemu-system-x86_64)
#   --rounds N             migrations, alternating between two "hosts" (default 3); every round
#                          starts a fresh destination server and QEMU, the source QEMU quits
#   --slow-target          in every round, SIGSTOP tgtd just before the migration converges and
#                          SIGCONT it only after QEMU's main loop stalled in vm_stop (requests
#                          are in flight at the stop and must be completed before the switchover)
#   --bandwidth MIB        migration max-bandwidth in MiB/s (default 32)
#   --memory MB            guest RAM (default 512)
#   --cpu MODEL            QEMU -cpu for both sides (default: run-guest.sh's choice, under TCG
#                          max,la57=off)
#   --qemu-arg ARG         extra QEMU argument for both sides (repeatable)
#   --server-arg ARG       extra server argument (repeatable)
#   --server-env VAR=VAL   environment for the servers (repeatable), e.g.
#                          VUS_DEBUG_SKIP_DATA_IN_LOGGING=1 (the test must then fail)
#   --work DIR             where logs and the LUN go (default: a new /tmp/vus-mig.XXXXXX)
# Prints one PASS/FAIL line per check, then "N passed, M failed"; exits 1 if anything failed,
# 2 on a usage error.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "migrate-test: error: $*" >&2; exit 2; }
say() { echo "migrate-test: $(date +%T) $*"; }

server=""
builtin=0
qemu=qemu-system-x86_64
rounds=3
slow=0
bandwidth=32
memory=512
cpu=""
work=""
server_args=()
server_env=()
qemu_args=()
need() { (($# >= 2)) || die "$1 needs a value"; }
while (($#)); do
    case $1 in
        --builtin-iscsi) builtin=1; shift ;;
        --qemu) need "$@"; qemu=$2; shift 2 ;;
        --rounds) need "$@"; rounds=$2; shift 2 ;;
        --slow-target) slow=1; shift ;;
        --bandwidth) need "$@"; bandwidth=$2; shift 2 ;;
        --memory) need "$@"; memory=$2; shift 2 ;;
        --cpu) need "$@"; cpu=$2; shift 2 ;;
        --qemu-arg) need "$@"; qemu_args+=(--qemu-arg "$2"); shift 2 ;;
        --server-arg) need "$@"; server_args+=("$2"); shift 2 ;;
        --server-env) need "$@"; server_env+=("$2"); shift 2 ;;
        --work) need "$@"; work=$2; shift 2 ;;
        -h | --help) usage 0 ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) [[ -z $server ]] || die "one SERVER_BINARY only"; server=$1; shift ;;
    esac
done
[[ $rounds =~ ^[0-9]+$ && $bandwidth =~ ^[0-9]+$ && $memory =~ ^[0-9]+$ ]] || die "--rounds, --bandwidth, --memory take numbers"
if ((builtin)); then
    [[ -z $server ]] || die "give either SERVER_BINARY or --builtin-iscsi"
else
    [[ -n $server ]] || die "give SERVER_BINARY or --builtin-iscsi (see --help)"
    [[ -x $server ]] || die "$server is not an executable"
    server=$(realpath "$server")
fi
command -v "$qemu" >/dev/null || die "QEMU '$qemu' not found"
[[ $qemu == */* ]] && qemu=$(realpath "$qemu")
work=${work:-$(mktemp -d /tmp/vus-mig.XXXXXX)}
mkdir -p "$work"
work=$(cd "$work" && pwd)

port=$((20000 + RANDOM % 10000))
ctl=$((100 + RANDOM % 800))
iqn=iqn.2026-11.org.vhost-user-scsi:migrate
url=iscsi://127.0.0.1:$port/$iqn/1
lunfile=$work/tgt/lun1.img
passed=0
failed=0
declare -A qpid=() spid=()

check() { # NAME 0|1 DETAIL
    if [[ $2 == 0 ]]; then
        echo "migrate-test: PASS $1 ${3:-}"
        passed=$((passed + 1))
    else
        echo "migrate-test: FAIL $1 ${3:-}"
        failed=$((failed + 1))
    fi
}

stop_pid() { # PID [SIGNAL]: signal our own child and wait for it (SIGKILL after 10 s)
    local pid=$1 sig=${2:-TERM} i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -"$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local k
    tgtpid=$(cat "$work/tgt/tgtd.pid" 2>/dev/null || true)
    [[ -n $tgtpid ]] && kill -CONT "$tgtpid" 2>/dev/null
    for k in "${!qpid[@]}"; do stop_pid "${qpid[$k]}"; done
    for k in "${!spid[@]}"; do stop_pid "${spid[$k]}"; done
    "$here/tgt.sh" stop "$work/tgt" "$ctl" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'say interrupted; exit 130' INT TERM

T0=$(date +%s)
mode=$([[ $builtin == 1 ]] && echo "builtin-iscsi" || echo "vhost-user $(basename "$server")")
say "mode $mode, QEMU $("$qemu" --version | head -n1), rounds $rounds, bandwidth ${bandwidth} MiB/s, memory ${memory} MiB, slow target $slow, work $work"

"$here/build-guest.sh" >/dev/null 2>&1 || "$here/build-guest.sh"
mkdir -p "$work/tgt"
"$here/tgt.sh" start "$work/tgt" "$port" "$ctl" "$iqn" lun1.img:256 >/dev/null 2>"$work/tgt.out" ||
    { cat "$work/tgt.out"; die "tgtd did not start"; }
tgtpid=$(cat "$work/tgt/tgtd.pid")

# ---- one "host": a server (unless builtin) and a QEMU ----------------------------------------
start_server() { # N
    local n=$1 sock=$work/vus-$1.sock i
    env "${server_env[@]}" "$server" --socket "$sock" --lun "$url" --num-queues 2 \
        --initiator-name "iqn.2026-11.org.vhost-user-scsi:migtest-host$n" --log-level info \
        "${server_args[@]}" >"$work/server-$n.log" 2>&1 &
    spid[$n]=$!
    for ((i = 0; i < 100; i++)); do [[ -S $sock ]] && return 0; kill -0 "${spid[$n]}" 2>/dev/null || break; sleep 0.1; done
    cat "$work/server-$n.log"
    return 1
}
start_qemu() { # N [INCOMING-URI]
    local n=$1 incoming=${2:-} dev cmd
    if ((builtin)); then
        dev=(--builtin-iscsi "$url" --qemu-arg -iscsi --qemu-arg "initiator-name=iqn.2026-11.org.qemu:migtest-host$n")
    else
        dev=(--vhost-user "$work/vus-$n.sock")
    fi
    [[ -n $cpu ]] && dev+=(--qemu-arg -cpu --qemu-arg "$cpu")
    dev+=("${qemu_args[@]}")
    rm -f "$work/qmp-$n.sock"
    cmd=$("$here/run-guest.sh" --dry-run --qemu "$qemu" "${dev[@]}" --num-queues 2 --memory "$memory" \
        --workload migrate --append "vus.migrate_seconds=900 init_on_alloc=0" --log "$work/serial-$n.log" \
        --qmp "$work/qmp-$n.sock" ${incoming:+--incoming "$incoming"} 2>/dev/null)
    eval "local args=($cmd)"
    : >"$work/serial-$n.log"
    "${args[@]}" </dev/null >"$work/qemu-$n.log" 2>&1 &
    qpid[$n]=$!
}
# Last progress generation printed in a serial log (0 when none).
last_gen() { tr -d '\r' <"$1" | sed -n 's/.*VUS-INFO migrate-progress gen=\([0-9]*\).*/\1/p' | tail -n1 | grep . || echo 0; }
wait_gen() { # LOG MIN-GEN TIMEOUT [PID]: until the guest printed progress gen >= MIN-GEN
    local t=$(($(date +%s) + $3))
    while (($(date +%s) < t)); do
        (($(last_gen "$1") >= $2)) && return 0
        [[ -n ${4:-} ]] && ! kill -0 "$4" 2>/dev/null && { echo "QEMU (pid $4) exited"; return 1; }
        sleep 0.5
    done
    return 1
}
qmp() { python3 "$here/migtool.py" qmp "$@"; }

# ---- the first host boots the guest ----------------------------------------------------------
if ((!builtin)); then start_server 0 || die "server 0 did not start"; fi
start_qemu 0
say "host 0: QEMU pid ${qpid[0]}${spid[0]:+, server pid ${spid[0]}}; waiting for the workload"
wait_gen "$work/serial-0.log" 2 240 "${qpid[0]}" && rc=0 || rc=1
check workload_running "$rc" "(guest at gen $(last_gen "$work/serial-0.log") on host 0)"

# ---- migrations -------------------------------------------------------------------------------
src=0
for ((r = 1; r <= rounds; r++)); do
    dst=$r
    mport=$((30000 + RANDOM % 10000))
    if ((!builtin)); then
        start_server "$dst" || { check "round${r}_dst_server" 1 "did not start"; break; }
    fi
    start_qemu "$dst" "tcp:127.0.0.1:$mport"
    if ! st=$(python3 "$here/migtool.py" wait-status "$work/qmp-$dst.sock" inmigrate 60 2>&1); then
        check "round${r}_dst_ready" 1 "$st; $(tail -n 5 "$work/qemu-$dst.log")"
        break
    fi
    g0=$(last_gen "$work/serial-$src.log")
    say "round $r: host $src -> host $dst (port $mport), guest at gen $g0"
    hold=()
    ((slow)) && hold=(--hold-pid "$tgtpid" --hold-ms 800)
    t_mig=$(date +%s.%N)
    set +e
    summary=$(python3 "$here/migtool.py" migrate "$work/qmp-$src.sock" "tcp:127.0.0.1:$mport" \
        --bandwidth "$bandwidth" --timeout 240 "${hold[@]}" 2>&1)
    rc=$?
    set -e
    echo "$summary" >"$work/migrate-$r.txt"
    check "round${r}_migrate" "$rc" "host $src -> $dst: $summary"
    ((rc == 0)) || { tail -n 5 "$work/qemu-$src.log" "$work/qemu-$dst.log" 2>/dev/null; break; }

    st_dst=$(python3 "$here/migtool.py" wait-status "$work/qmp-$dst.sock" running 30 2>&1) && rc=0 || rc=1
    check "round${r}_dst_running" "$rc" "$st_dst"
    if ((rc)); then
        say "the destination does not run; its serial console and QEMU output:"
        tr -d '\r' <"$work/serial-$dst.log" | grep -av '^ *$' | head -n 12 | sed 's/^/    /'
        sed 's/^/    qemu: /' "$work/qemu-$dst.log" | tail -n 5
        src=$dst
        break
    fi
    st_src=$(qmp "$work/qmp-$src.sock" query-status 2>&1 | sed -n 's/.*"status": "\([a-z-]*\)".*/\1/p')
    check "round${r}_src_postmigrate" "$([[ $st_src == postmigrate ]]; echo $?)" "source status $st_src"
    qmp "$work/qmp-$src.sock" quit >/dev/null 2>&1 || true
    stop_pid "${qpid[$src]}" 0 # only waits (signal 0), SIGKILL after 10 s
    unset "qpid[$src]"
    if ((!builtin)); then
        # The source QEMU is gone: its server stopped the rings; an orchestrator now stops it.
        sleep 0.5
        kill -TERM "${spid[$src]}" 2>/dev/null || true
        set +e
        wait "${spid[$src]}"
        src_rc=$?
        set -e
        unset "spid[$src]"
        check "round${r}_src_server_exit" "$([[ $src_rc == 0 ]] && grep -q 'shut down cleanly' "$work/server-$src.log"; echo $?)" "exit $src_rc"
        grep -E 'stopped at avail index|drain|in flight|dirty log|frontend disconnected' "$work/server-$src.log" | sed "s/^/    server-$src: /" | tail -n 12
    fi
    # The guest goes on on the destination.
    w=$(wait_gen "$work/serial-$dst.log" $((g0 + 1)) 120 "${qpid[$dst]}") && rc=0 || rc=1
    check "round${r}_progress_on_dst" "$rc" "$w(gen $g0 on the source, now $(last_gen "$work/serial-$dst.log") on host $dst)"
    errs=$(tr -d '\r' <"$work/serial-$dst.log" | grep -a 'migrate-error' | head -n 5 || true)
    check "round${r}_no_guest_errors" "$([[ -z $errs ]]; echo $?)" "$errs"
    if ((slow)); then
        stopped=$(sed -n 's/.*target_stopped_at=\([0-9.]*\).*/\1/p' <<<"$summary")
        stalled=$(sed -n 's/.*qmp_stalled_at=\([0-9.]*\).*/\1/p' <<<"$summary")
        cont=$(sed -n 's/.*target_continued_at=\([0-9.]*\).*/\1/p' <<<"$summary")
        detail="tgtd stopped at ${stopped:-never}, QEMU main loop stalled (vm_stop draining) at ${stalled:-never}, tgtd continued at ${cont:-never}"
        check "round${r}_stop_while_target_slow" "$([[ -n $stopped && -n $stalled && -n $cont ]]; echo $?)" "$detail"
        if ((!builtin)); then
            # The source server drained requests that were in flight at GET_VRING_BASE, and
            # finished only after tgtd continued (its log lines carry epoch timestamps).
            drains=$(awk -v a="${stopped:-0}" '$1 >= a && /draining [0-9]+ in-flight|: drained/' "$work/server-$src.log")
            n=$(sed -n 's/.*draining \([0-9]*\) in-flight.*/\1/p' <<<"$drains" | awk '{ s += $1 } END { print s + 0 }')
            late=$(awk -v c="${cont:-9e99}" '/: drained/ && $1 >= c - 0.05 { n++ } END { print n + 0 }' <<<"$drains")
            check "round${r}_drained_in_flight" "$( ((n > 0 && late > 0)); echo $?)" \
                "source server drained $n request(s) in flight at GET_VRING_BASE, $late ring(s) finished draining after tgtd continued: $(tr '\n' ';' <<<"$drains")"
        fi
    fi
    src=$dst
done

# ---- the end: the guest verifies everything, the host reads the LUN --------------------------
# The marker in the LUN's last 4 KiB ends the workload (tgtd reads the file with pread).
size=$(stat -c %s "$lunfile")
python3 "$here/migtool.py" write-marker "$lunfile" $((size - 4096))
say "stop marker written; waiting for the guest's final verification on host $src"
t=$(($(date +%s) + 240))
while (($(date +%s) < t)) && ! grep -aq 'VUS-DONE' "$work/serial-$src.log"; do
    kill -0 "${qpid[$src]}" 2>/dev/null || break
    sleep 0.5
done
grep -aq 'VUS-DONE' "$work/serial-$src.log" && rc=0 || rc=1
check guest_done "$rc" "(VUS-DONE on host $src)"
for ((i = 0; i < 100; i++)); do kill -0 "${qpid[$src]}" 2>/dev/null || break; sleep 0.2; done
stop_pid "${qpid[$src]}"
unset "qpid[$src]"
if ((!builtin)); then
    stop_pid "${spid[$src]}"
    unset "spid[$src]"
fi

cat "$work"/serial-*.log | tr -d '\r' | grep -aoE 'VUS-(INFO|RESULT|DONE)( .*|$)' >"$work/guest-all.txt" || true
final=$(tr -d '\r' <"$work/serial-$src.log" | grep -aoE 'VUS-(RESULT|DONE)( .*|$)' || true)
echo "$final" | sed 's/^/    guest: /'
while read -r _ name verdict rest; do
    [[ -n ${name:-} ]] || continue
    check "guest_$name" "$([[ $verdict == PASS ]]; echo $?)" "$rest"
done < <(grep '^VUS-RESULT' <<<"$final" || true)
errs=$(grep -a 'migrate-error\|migrate-diag' "$work/guest-all.txt" | head -n 10 || true)
check guest_no_errors_any_host "$([[ -z $errs ]]; echo $?)" "$errs"

fin=$(grep -a 'VUS-INFO migrate-final' "$work/guest-all.txt" | tail -n 1 || true)
g=$(sed -n 's/.* gen=\([0-9]*\).*/\1/p' <<<"$fin")
slots=$(sed -n 's/.* slots=\([0-9]*\).*/\1/p' <<<"$fin")
groups=$(sed -n 's/.* groups=\([0-9]*\).*/\1/p' <<<"$fin")
foff=$(sed -n 's/.* fio_offset=\([0-9]*\).*/\1/p' <<<"$fin")
fmb=$(sed -n 's/.* fio_mb=\([0-9]*\).*/\1/p' <<<"$fin")
fqd=$(sed -n 's/.* fio_iodepth=\([0-9]*\).*/\1/p' <<<"$fin")
if [[ -n $g && -n $slots && -n $groups ]]; then
    out=$(python3 "$here/migtool.py" check-lun "$lunfile" "$slots" "$groups" "$g" 2>&1) && rc=0 || rc=1
    check host_lun_pattern "$rc" "$(tail -n1 <<<"$out")"
    ((rc == 0)) || sed 's/^/    /' <<<"$out"
    for a in 0 1; do
        o=$((foff + a * fmb * 1048576))
        out=$(fio --name=$([[ $a == 0 ]] && echo mig || echo migread) --filename="$lunfile" --offset="$o" --size="${fmb}M" --rw=randwrite --bs=4k \
            --iodepth="$fqd" --direct=1 --ioengine=libaio --verify=crc32c --do_verify=1 --verify_only --verify_fatal=1 --verify_state_save=0 \
            --output-format=terse --terse-version=3 2>&1) && rc=0 || rc=1
        check host_lun_fio_area$a "$rc" "(fio --verify_only crc32c over ${fmb} MiB at offset $o of the backing file)$( ((rc)) && grep -v '^3;' <<<"$out" | head -n 3)"
    done
else
    check host_lun_pattern 1 "no migrate-final line from the guest"
fi

say "logs in $work (serial-N.log, qemu-N.log, server-N.log, migrate-N.txt); $(($(date +%s) - T0)) s in all"
echo "$passed passed, $failed failed"
((failed == 0))
