#!/usr/bin/env bash
# Side-by-side benchmark on this machine, in one run (Docs/BENCHMARKS.md):
#   1. the ceiling: libiscsi straight from the host to the LUN (Benchmarks/iscsi-load.c, an
#      asynchronous libiscsi driver like the server's, because iscsi-perf does only reads and
#      prints no latency; iscsi-perf runs beside it for the read jobs as a cross-check)
#   2. this server (vhost-user-scsi) driven by the load generator (vhost-user-scsi-bench)
#   2b. optionally (CONTRIB_BIN set) QEMU's contrib vhost-user-scsi, the sample backend built by
#      Scripts/qemu-contrib-scsi.sh, driven by the same load generator on the same LUN, for the
#      jobs with 1 request queue (it serves commands one at a time, synchronously)
#   3. optionally inside a guest (fio, O_DIRECT): this server against QEMU's own virtio-scsi
#      with its built-in libiscsi driver on the same LUN (Scripts/run-guest.sh)
# All against one private tgtd on 127.0.0.1 whose LUN is a file in /dev/shm (tmpfs, memory),
# so the target is as fast as tgt gets. Every figure is the median of RUNS runs.
#
# Usage: Scripts/bench.sh [--quick] [--guest] [--no-build]
#   --quick     smoke: RUNS=1 RUNTIME=2 RAMP=0.5, one request queue, 2 jobs, no guest
#   --guest     also the in-guest comparison (boots the test guest 2x2xGUEST_RUNS times;
#               needs guest/out from Scripts/build-guest.sh)
#   --no-build  use the binaries already built (SERVER_BIN, BENCH_BIN or the release build)
# Environment (defaults in brackets):
#   RUNS [3]  RUNTIME [10]  RAMP [1]  QUEUES ["1 2"]  LUN_MB [512]
#   JOBS ["randread:4k:1 randread:4k:32 randwrite:4k:32 read:128k:8"]  (rw:bs:depth)
#   GUEST_RUNS [1]  GUEST_RUNTIME [10]  GUEST_JOBS ["randread:4k:32 randread:4k:1"]
#   PORT [3390]  CTLPORT [3391]  WORKDIR [.build/bench]  SCRATCH [.build] (swift --scratch-path)
#   SERVER_BIN  BENCH_BIN  (default: the release build in SCRATCH)
#   CONTRIB_BIN [unset]  QEMU's contrib vhost-user-scsi (Scripts/qemu-contrib-scsi.sh prints
#               its path); when set, each 1-queue job also runs against it, one fresh process
#               per run (it serves a single connection), and the table gets its columns
# Prints a table per job and queue count: ceiling and our IOPS and their ratio, p50/p99
# latency, CPU µs per I/O (ceiling tool; our server), with CONTRIB_BIN the contrib backend's
# IOPS, p50 and CPU per I/O and our IOPS over its, then the in-guest comparison.
# Exit status: 0 when every run worked, 1 when one failed, 2 on bad usage.
set -euo pipefail

say() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$REPO"

QUICK=0 GUEST=0 BUILD=1
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --guest) GUEST=1 ;;
        --no-build) BUILD=0 ;;
        -h|--help) usage ;;
        *) echo "bench: unknown argument $arg" >&2; usage ;;
    esac
done
if ((QUICK)); then
    : "${RUNS:=1}" "${RUNTIME:=2}" "${RAMP:=0.5}" "${QUEUES:=1}" "${JOBS:=randread:4k:1 randread:4k:32}"
fi
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-10}
RAMP=${RAMP:-1}
QUEUES=${QUEUES:-1 2}
LUN_MB=${LUN_MB:-512}
JOBS=${JOBS:-randread:4k:1 randread:4k:32 randwrite:4k:32 read:128k:8}
GUEST_RUNS=${GUEST_RUNS:-1}
GUEST_RUNTIME=${GUEST_RUNTIME:-10}
GUEST_JOBS=${GUEST_JOBS:-randread:4k:32 randread:4k:1}
PORT=${PORT:-3390}
CTLPORT=${CTLPORT:-3391}
SCRATCH=${SCRATCH:-.build}
WORKDIR=${WORKDIR:-$SCRATCH/bench}
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
IQN=iqn.2026-01.org.vhost-user-scsi:bench
LUNFILE=/dev/shm/vus-bench-$$.img
URL=iscsi://127.0.0.1:$PORT/$IQN/1
SOCK=$WORKDIR/vus.sock
MAXQ=1
for q in $QUEUES; do ((q > MAXQ)) && MAXQ=$q; done
((MAXQ < 2)) && MAXQ=2   # the guest's device has 2 request queues

# --- build ---------------------------------------------------------------------------------
if ((BUILD)); then
    say "building release binaries (swift build -c release --scratch-path $SCRATCH)"
    swift build -c release --scratch-path "$SCRATCH" --product vhost-user-scsi >&2
    swift build -c release --scratch-path "$SCRATCH" --product vhost-user-scsi-bench >&2
fi
BINDIR=$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)
SERVER_BIN=${SERVER_BIN:-$BINDIR/vhost-user-scsi}
BENCH_BIN=${BENCH_BIN:-$BINDIR/vhost-user-scsi-bench}
[[ -x $SERVER_BIN && -x $BENCH_BIN ]] || die "no $SERVER_BIN or $BENCH_BIN (build first)"
CONTRIB_BIN=${CONTRIB_BIN:-}
if [[ -n $CONTRIB_BIN ]]; then
    "$CONTRIB_BIN" --help >/dev/null 2>&1 ||
        die "CONTRIB_BIN=$CONTRIB_BIN does not run (build it with Scripts/qemu-contrib-scsi.sh)"
fi
LOAD_BIN=$WORKDIR/iscsi-load
cc -O2 -o "$LOAD_BIN" Benchmarks/iscsi-load.c -liscsi -lpthread || die "cannot build Benchmarks/iscsi-load.c (libiscsi-dev)"
command -v iscsi-perf >/dev/null || die "iscsi-perf missing (apt-get install libiscsi-bin)"

# --- target and server -----------------------------------------------------------------------
SERVER_PID="" CONTRIB_PID=""
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
    [[ -n $CONTRIB_PID ]] && kill "$CONTRIB_PID" 2>/dev/null && wait "$CONTRIB_PID" 2>/dev/null || true
    Scripts/tgt.sh stop "$WORKDIR/tgt" "$CTLPORT" >/dev/null 2>&1 || true
    rm -f "$LUNFILE"
}
trap cleanup EXIT
say "tgtd on 127.0.0.1:$PORT, LUN 1 = $LUNFILE ($LUN_MB MiB in tmpfs, written once so no page is a hole)"
dd if=/dev/zero of="$LUNFILE" bs=1M count="$LUN_MB" status=none
Scripts/tgt.sh start "$WORKDIR/tgt" "$PORT" "$CTLPORT" "$IQN" "$LUNFILE:$LUN_MB" >/dev/null
TGT_PID=$(cat "$WORKDIR/tgt/tgtd.pid")

"$SERVER_BIN" --socket "$SOCK" --lun "$URL" --num-queues "$MAXQ" --log-level warning \
    >"$WORKDIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do [[ -S $SOCK ]] && break; sleep 0.1; done
[[ -S $SOCK ]] || die "the server did not start: $(tail -n 3 "$WORKDIR/server.log")"

# --- helpers ---------------------------------------------------------------------------------
median() { tr ' ' '\n' | awk NF | sort -g | awk '{v[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
kv() { sed -n "s/.*\\b$1=\\([0-9.]*\\).*/\\1/p" <<<"$2"; }         # key=value
jv() { sed -n "s/.*\"$1\": \\([0-9.]*\\).*/\\1/p" <<<"$2"; }       # "key": value
bytes() { case $1 in *k) echo $(( ${1%k} * 1024 ));; *m) echo $(( ${1%m} * 1048576 ));; *) echo "$1";; esac; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
fmt() { [[ $1 == - || -z $1 ]] && { echo -; return; }; printf "%.${2:-0}f" "$1"; }
ratio() { [[ $1 == - || $2 == - || -z $1 || -z $2 ]] && { echo -; return; }; awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }
FAILED=0

# The contrib backend accepts one connection, logs in to the LUN, serves until the frontend
# disconnects, then exits; so every run starts a fresh one. The bench's JSON goes to
# $WORKDIR/contrib.json. Not run in $(...), so that cleanup() knows CONTRIB_PID.
CSOCK=$WORKDIR/contrib.sock
run_contrib() {
    rm -f "$CSOCK" "$WORKDIR/contrib.json"
    "$CONTRIB_BIN" -s "$CSOCK" -i "$URL" >"$WORKDIR/contrib.log" 2>&1 &
    CONTRIB_PID=$!
    for _ in $(seq 50); do [[ -S $CSOCK ]] && break; sleep 0.1; done
    local rc=0
    if [[ -S $CSOCK ]]; then
        "$BENCH_BIN" --socket "$CSOCK" "$@" --backend-pid "$CONTRIB_PID" --json -q \
            >"$WORKDIR/contrib.json" 2>"$WORKDIR/bench.err" || rc=$?
    else
        echo "the contrib backend did not start: $(tail -n 3 "$WORKDIR/contrib.log")" >"$WORKDIR/bench.err"; rc=1
    fi
    for _ in $(seq 30); do kill -0 "$CONTRIB_PID" 2>/dev/null || break; sleep 0.1; done
    kill "$CONTRIB_PID" 2>/dev/null || true
    wait "$CONTRIB_PID" 2>/dev/null || true
    CONTRIB_PID=""
    return "$rc"
}

# --- host-side runs --------------------------------------------------------------------------
ROWS=()
for job in $JOBS; do
    IFS=: read -r rw bs depth <<<"$job"
    nbytes=$(bytes "$bs")
    for q in $QUEUES; do
        c_iops=() c_p50=() c_p99=() c_cpu=() p_iops=() p_cpu=() o_iops=() o_p50=() o_p99=() o_cpu=() o_tcpu=() c_tcpu=()
        k_iops=() k_p50=() k_cpu=()
        for run in $(seq "$RUNS"); do
            say "$rw bs=$bs depth=$depth queues=$q run $run/$RUNS: ceiling (iscsi-load)"
            t0=$(cpu_ticks "$TGT_PID")
            if out=$("$LOAD_BIN" -m "$depth" -b "$nbytes" -t "$RUNTIME" -R "$RAMP" -w "$rw" -c "$q" "$URL" 2>"$WORKDIR/load.err"); then
                t1=$(cpu_ticks "$TGT_PID")
                ios=$(kv ios "$out")
                c_iops+=("$(kv iops "$out")") c_p50+=("$(kv p50_us "$out")") c_p99+=("$(kv p99_us "$out")")
                c_cpu+=("$(kv cpu_us_per_io "$out")")
                c_tcpu+=("$(awk -v t=$((t1 - t0)) -v n="$ios" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", t / hz / n * 1e6}')")
            else
                say "iscsi-load failed: $(cat "$WORKDIR/load.err")"; FAILED=1
            fi
            if [[ $rw == read || $rw == randread ]] && ((q == 1)); then
                # iscsi-perf: sequential READ16 (-r random), -m in flight, -b blocks of 512 bytes.
                say "  cross-check: iscsi-perf"
                flags=(); [[ $rw == randread ]] && flags=(-r)
                secs=$(awk -v r="$RUNTIME" -v p="$RAMP" 'BEGIN{printf "%d", r + p + 0.999}')
                if pout=$(/usr/bin/time -f "TIME %U %S" iscsi-perf "${flags[@]}" -m "$depth" -b $((nbytes / 512)) -t "$secs" "$URL" 2>&1); then
                    pi=$(grep -o 'iops average [0-9]*' <<<"$pout" | tail -n 1 | awk '{print $3}')
                    pt=$(grep '^TIME' <<<"$pout" | awk '{print $2 + $3}')
                    p_iops+=("$pi")
                    p_cpu+=("$(awk -v t="$pt" -v i="$pi" -v s="$secs" 'BEGIN{ if (i > 0) printf "%.2f", t / (i * s) * 1e6 }')")
                else
                    say "iscsi-perf failed: $(tail -n 2 <<<"$pout")"; FAILED=1
                fi
            fi
            say "  this server (vhost-user-scsi-bench)"
            t0=$(cpu_ticks "$TGT_PID")
            if out=$("$BENCH_BIN" --socket "$SOCK" --rw "$rw" --bs "$bs" --iodepth "$depth" --queues "$q" \
                        --runtime "$RUNTIME" --ramp "$RAMP" --backend-pid "$SERVER_PID" --json -q 2>"$WORKDIR/bench.err"); then
                t1=$(cpu_ticks "$TGT_PID")
                ios=$(jv ios "$out")
                o_iops+=("$(jv iops "$out")") o_p50+=("$(awk -v v="$(jv p50 "$out")" 'BEGIN{print v/1000}')")
                o_p99+=("$(awk -v v="$(jv p99 "$out")" 'BEGIN{print v/1000}')")
                o_cpu+=("$(jv backend_cpu_us_per_io "$out")")
                o_tcpu+=("$(awk -v t=$((t1 - t0)) -v n="$ios" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", t / hz / n * 1e6}')")
            else
                say "vhost-user-scsi-bench failed: $(cat "$WORKDIR/bench.err") $out"; FAILED=1
            fi
            if [[ -n $CONTRIB_BIN ]] && ((q == 1)); then
                say "  QEMU's contrib vhost-user-scsi (vhost-user-scsi-bench)"
                if run_contrib --rw "$rw" --bs "$bs" --iodepth "$depth" --queues 1 \
                        --runtime "$RUNTIME" --ramp "$RAMP"; then
                    out=$(cat "$WORKDIR/contrib.json")
                    k_iops+=("$(jv iops "$out")") k_p50+=("$(awk -v v="$(jv p50 "$out")" 'BEGIN{print v/1000}')")
                    k_cpu+=("$(jv backend_cpu_us_per_io "$out")")
                else
                    say "vhost-user-scsi-bench against the contrib backend failed: $(cat "$WORKDIR/bench.err" "$WORKDIR/contrib.json" 2>/dev/null)"; FAILED=1
                fi
            fi
        done
        ci=$(echo "${c_iops[*]:-}" | median) oi=$(echo "${o_iops[*]:-}" | median)
        ROWS+=("$(printf '%-18s %2s %9s %9s %6s | %8s %8s | %8s %8s | %6s %6s | %6s %6s | %9s %6s' \
            "$rw/$bs/qd$depth" "$q" "$(fmt "$ci")" "$(fmt "$oi")" "$(ratio "$oi" "$ci")" \
            "$(fmt "$(echo "${c_p50[*]:-}" | median)" 1)" "$(fmt "$(echo "${o_p50[*]:-}" | median)" 1)" \
            "$(fmt "$(echo "${c_p99[*]:-}" | median)" 1)" "$(fmt "$(echo "${o_p99[*]:-}" | median)" 1)" \
            "$(fmt "$(echo "${c_cpu[*]:-}" | median)" 2)" "$(fmt "$(echo "${o_cpu[*]:-}" | median)" 2)" \
            "$(fmt "$(echo "${c_tcpu[*]:-}" | median)" 2)" "$(fmt "$(echo "${o_tcpu[*]:-}" | median)" 2)" \
            "$(fmt "$(echo "${p_iops[*]:-}" | median)")" "$(fmt "$(echo "${p_cpu[*]:-}" | median)" 2)")")
        if [[ -n $CONTRIB_BIN ]]; then
            ki=$(echo "${k_iops[*]:-}" | median)
            ROWS[-1]+=$(printf ' | %8s %8s %6s %6s' "$(fmt "$ki")" "$(fmt "$(echo "${k_p50[*]:-}" | median)" 1)" \
                "$(fmt "$(echo "${k_cpu[*]:-}" | median)" 2)" "$(ratio "$oi" "$ki")")
        fi
    done
done

echo
echo "Host side: medians of $RUNS run(s) x ${RUNTIME}s (+${RAMP}s ramp); tgtd LUN in tmpfs; $(nproc) CPUs"
echo "  ceiling = Benchmarks/iscsi-load (libiscsi, one session per queue); ours = vhost-user-scsi-bench -> vhost-user-scsi"
echo "  lat = µs at p50/p99; cpu = µs of CPU per I/O (ceiling: the libiscsi tool; ours: the server process);"
echo "  tgtd = the target's CPU per I/O in the same runs; iscsi-perf = cross-check of the ceiling (reads, 1 queue)"
header=$(printf '%-18s %2s %9s %9s %6s | %8s %8s | %8s %8s | %6s %6s | %6s %6s | %9s %6s' \
    job q ceil_iops our_iops ratio ceil_p50 our_p50 ceil_p99 our_p99 c_cpu o_cpu c_tgtd o_tgtd perf_iops p_cpu)
if [[ -n $CONTRIB_BIN ]]; then
    echo "  qc = QEMU's contrib vhost-user-scsi ($CONTRIB_BIN), 1 queue only: IOPS, p50 µs, CPU µs per I/O;"
    echo "       our/qc = our IOPS over its"
    header+=$(printf ' | %8s %8s %6s %6s' qc_iops qc_p50 qc_cpu our/qc)
fi
echo "$header"
for row in "${ROWS[@]}"; do echo "$row"; done

# --- in the guest ----------------------------------------------------------------------------
if ((GUEST)); then
    [[ -f guest/out/vmlinuz && -f guest/out/initrd.img ]] || die "no guest in guest/out (Scripts/build-guest.sh)"
    GROWS=()
    for job in $GUEST_JOBS; do
        IFS=: read -r rw bs depth <<<"$job"
        v_iops=() v_lat=() b_iops=() b_lat=()
        for run in $(seq "$GUEST_RUNS"); do
            for mode in vhost builtin; do
                say "guest $rw bs=$bs depth=$depth run $run/$GUEST_RUNS: $mode"
                attach=(--vhost-user "$SOCK"); [[ $mode == builtin ]] && attach=(--builtin-iscsi "$URL")
                log=$WORKDIR/guest-$mode-$rw-$bs-$depth-$run.log
                if Scripts/run-guest.sh --workload fio --quiet --log "$log" "${attach[@]}" \
                        --append "vus.fio_rw=$rw vus.fio_bs=$bs vus.fio_iodepth=$depth vus.fio_runtime=$GUEST_RUNTIME" \
                        >"$WORKDIR/guest.out" 2>&1; then
                    line=$(grep -a 'VUS-RESULT fio PASS' "$log" | tail -n 1)
                    key="read"; [[ $rw == *write ]] && key="write"
                    if [[ $mode == vhost ]]; then
                        v_iops+=("$(kv ${key}_iops "$line")") v_lat+=("$(kv ${key}_lat_avg_us "$line")")
                    else
                        b_iops+=("$(kv ${key}_iops "$line")") b_lat+=("$(kv ${key}_lat_avg_us "$line")")
                    fi
                else
                    say "guest run failed ($mode), log $log"; FAILED=1
                fi
            done
        done
        vi=$(echo "${v_iops[*]:-}" | median) bi=$(echo "${b_iops[*]:-}" | median)
        vl=$(echo "${v_lat[*]:-}" | median) bl=$(echo "${b_lat[*]:-}" | median)
        GROWS+=("$(printf '%-18s %10s %10s %6s | %10s %10s %6s' "$rw/$bs/qd$depth" "$(fmt "$bi")" "$(fmt "$vi")" \
            "$(ratio "$vi" "$bi")" "$(fmt "$bl" 1)" "$(fmt "$vl" 1)" "$(ratio "$vl" "$bl")")")
    done
    echo
    echo "In the guest (fio O_DIRECT libaio, 1 job, ${GUEST_RUNTIME}s, median of $GUEST_RUNS; $(grep -m1 -o 'accel [a-z]*' "$WORKDIR/guest.out" 2>/dev/null || echo 'accel auto'))"
    echo "  builtin = QEMU virtio-scsi-pci + scsi-hd + libiscsi; ours = vhost-user-scsi-pci -> this server; lat = fio mean µs"
    printf '%-18s %10s %10s %6s | %10s %10s %6s\n' job builtin_iops our_iops ratio builtin_lat our_lat ratio
    for row in "${GROWS[@]}"; do echo "$row"; done
fi
exit "$FAILED"
