#!/usr/bin/env bash
# Boot the test guest (Scripts/build-guest.sh) under QEMU, wait for its workload to finish and
# judge the VUS-* lines it prints on its serial console (see Docs/GUEST.md).
#
# Usage: Scripts/run-guest.sh [options] (--vhost-user SOCK... | --builtin-iscsi URL...)
#   --vhost-user SOCK      attach a vhost-user-scsi-pci device on the backend socket SOCK
#                          (repeatable: one device per socket); guest RAM is a shared memfd
#   --builtin-iscsi URL    QEMU's own virtio-scsi + libiscsi for one LUN, e.g.
#                          iscsi://127.0.0.1:3260/iqn.2024-01.test:vus/1 (repeatable, one per LUN)
#   --builtin-device TYPE  scsi-hd (default: QEMU emulates the SCSI disk) or scsi-block
#                          (QEMU passes the commands through to the LUN)
#   --num-queues N         request queues of the virtio-scsi device(s) (default 2)
#   --workload NAME        e2e (default), demo, fio, migrate, outage or shell (interactive,
#                          serial on stdio); see Docs/GUEST.md
#   --append "ARGS"        extra kernel command line, e.g. "vus.expect_luns=2" (repeatable)
#   --kernel DIR           where vmlinuz and initrd.img are (default guest/out)
#   --log FILE             serial console log (default guest/out/logs/WORKLOAD-TIME.log)
#   --timeout SECONDS      kill the guest after this long (default 900)
#   --qemu PATH            QEMU binary (default qemu-system-x86_64)
#   --qemu-arg ARG         one extra QEMU argument (repeatable)
#   --reconnect-ms MS      with --vhost-user: QEMU reconnects to a backend that went away
#                          (QEMU 8.2 or later; use Scripts/qemu10.sh's QEMU)
#   --accel auto|tcg|kvm   auto (default) uses KVM only when the CPU has vmx/svm and the
#                          software kvm_pvm module is not loaded, else TCG
#   --smp N, --memory MB   vCPUs (default 2) and RAM in MiB (default 1024)
#   --expect-target URL    after the run, compare guest disk number i (in SCSI address order)
#                          with the i-th URL as the target reports it (iscsi-readcapacity16,
#                          iscsi-inq): size, logical block size, vendor, product, revision
#                          (repeatable; adds host_target_N results)
#   --no-inquiry-compare   with --expect-target, compare only size and block size (QEMU's
#                          scsi-hd answers INQUIRY itself: vendor QEMU)
#   --qmp SOCKET           also give QEMU a QMP server on the Unix socket SOCKET
#   --incoming URI         start QEMU as a live-migration destination (-incoming URI, e.g.
#                          tcp:127.0.0.1:4444); the guest then continues where the source was
#   --quiet                do not stream the serial console while the guest runs
#   --dry-run              print the QEMU command line and exit
# Exit status: 0 when the guest printed VUS-DONE with fail=0 and no VUS-RESULT ... FAIL line
# (host comparisons included), 1 otherwise (also on timeout), 2 on a usage error.
set -euo pipefail

say() { echo "run-guest: $*" >&2; }
die() { echo "run-guest: error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit "${1:-2}"; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)

KDIR=$REPO/guest/out
WORKLOAD=e2e
APPEND=""
LOG=""
TIMEOUT=900
QEMU=qemu-system-x86_64
ACCEL=auto
SMP=2
MEM=1024
NUMQ=2
RECONNECT_MS=
BUILTIN_DEV=scsi-hd
QUIET=0
DRYRUN=0
INQ_COMPARE=1
VHOST=()
ISCSI=()
EXPECT=()
QEXTRA=()
QMP=""
INCOMING=""

need() { (($# >= 2)) || die "$1 needs a value"; }
while (($#)); do
    case $1 in
        --vhost-user) need "$@"; VHOST+=("$2"); shift 2 ;;
        --builtin-iscsi) need "$@"; ISCSI+=("$2"); shift 2 ;;
        --builtin-device) need "$@"; BUILTIN_DEV=$2; shift 2 ;;
        --num-queues) need "$@"; NUMQ=$2; shift 2 ;;
        --workload) need "$@"; WORKLOAD=$2; shift 2 ;;
        --append) need "$@"; APPEND="$APPEND $2"; shift 2 ;;
        --kernel) need "$@"; KDIR=$2; shift 2 ;;
        --log) need "$@"; LOG=$2; shift 2 ;;
        --timeout) need "$@"; TIMEOUT=$2; shift 2 ;;
        --qemu) need "$@"; QEMU=$2; shift 2 ;;
        --qemu-arg) need "$@"; QEXTRA+=("$2"); shift 2 ;;
        --reconnect-ms) need "$@"; RECONNECT_MS=$2; shift 2 ;;
        --accel) need "$@"; ACCEL=$2; shift 2 ;;
        --smp) need "$@"; SMP=$2; shift 2 ;;
        --memory) need "$@"; MEM=$2; shift 2 ;;
        --expect-target) need "$@"; EXPECT+=("$2"); shift 2 ;;
        --no-inquiry-compare) INQ_COMPARE=0; shift ;;
        --qmp) need "$@"; QMP=$2; shift 2 ;;
        --incoming) need "$@"; INCOMING=$2; shift 2 ;;
        --quiet) QUIET=1; shift ;;
        --dry-run) DRYRUN=1; shift ;;
        -h | --help) usage 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

# Packages a fresh Debian 12 lacks (only the ones this run needs; quick when present).
apt_install() {
    ((EUID == 0)) || die "missing Debian package(s) $*; install them as root"
    say "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 || {
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends "$@" >/dev/null
    }
}
pkgs=()
[[ $QEMU == qemu-system-x86_64 ]] && ! command -v qemu-system-x86_64 >/dev/null && pkgs+=(qemu-system-x86)
((${#ISCSI[@]})) && [[ $QEMU == qemu-system-x86_64 ]] &&
    ! ls /usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so >/dev/null 2>&1 && pkgs+=(qemu-block-extra)
((${#EXPECT[@]})) && ! command -v iscsi-inq >/dev/null && pkgs+=(libiscsi-bin)
((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"

[[ $TIMEOUT =~ ^[0-9]+$ && $NUMQ =~ ^[0-9]+$ && $SMP =~ ^[0-9]+$ && $MEM =~ ^[0-9]+$ ]] ||
    die "--timeout, --num-queues, --smp and --memory take numbers"
((${#VHOST[@]} + ${#ISCSI[@]} > 0)) || die "give at least one --vhost-user SOCK or --builtin-iscsi URL"
[[ -s $KDIR/vmlinuz && -s $KDIR/initrd.img ]] ||
    die "no vmlinuz/initrd.img in $KDIR; run Scripts/build-guest.sh first"
command -v "$QEMU" >/dev/null || die "QEMU binary '$QEMU' not found (apt-get install qemu-system-x86)"
for s in "${VHOST[@]}"; do ((DRYRUN)) || [[ -S $s ]] || die "vhost-user socket $s does not exist (is the server listening?)"; done
case $BUILTIN_DEV in scsi-hd | scsi-block) ;; *) die "--builtin-device is scsi-hd or scsi-block" ;; esac

# ---- accelerator ----------------------------------------------------------------------------
kvm_usable() {
    grep -qwE 'vmx|svm' /proc/cpuinfo && [[ ! -d /sys/module/kvm_pvm ]] && [[ -w /dev/kvm ]]
}
case $ACCEL in
    auto) if kvm_usable; then ACCEL=kvm; else ACCEL=tcg; fi ;;
    kvm | tcg) ;;
    *) die "--accel is auto, tcg or kvm" ;;
esac
if [[ $ACCEL == kvm ]]; then
    ACCEL_ARGS=(-accel kvm -cpu host)
else
    # la57=off: QEMU 7.2's TCG with 5-level paging breaks migration; keep guests alike.
    ACCEL_ARGS=(-accel tcg -cpu "max,la57=off")
fi

# ---- command line ---------------------------------------------------------------------------
if [[ -z $LOG ]]; then
    LOG=$REPO/guest/out/logs/$WORKLOAD-$(date +%Y%m%d-%H%M%S).log
fi
QLOG=$LOG.qemu

CMDLINE="console=ttyS0 quiet panic=-1 vus.workload=$WORKLOAD${APPEND}"
ARGS=(-nodefaults -nographic -no-reboot -monitor none
    "${ACCEL_ARGS[@]}" -smp "$SMP" -m "${MEM}M"
    -kernel "$KDIR/vmlinuz" -initrd "$KDIR/initrd.img" -append "$CMDLINE")
if [[ $WORKLOAD == shell ]]; then
    ARGS+=(-serial mon:stdio)
else
    ARGS+=(-serial "file:$LOG")
fi
if ((${#VHOST[@]})); then
    ARGS+=(-object "memory-backend-memfd,id=mem,size=${MEM}M,share=on" -numa "node,memdev=mem")
    for i in "${!VHOST[@]}"; do
        ARGS+=(-chardev "socket,id=vus$i,path=${VHOST[$i]}${RECONNECT_MS:+,reconnect-ms=$RECONNECT_MS}"
            -device "vhost-user-scsi-pci,id=vscsi$i,chardev=vus$i,num_queues=$NUMQ")
    done
fi
if ((${#ISCSI[@]})); then
    ARGS+=(-device "virtio-scsi-pci,id=scsi0,num_queues=$NUMQ")
    for i in "${!ISCSI[@]}"; do
        ARGS+=(-drive "file=${ISCSI[$i]},if=none,id=d$i,format=raw,cache=none"
            -device "$BUILTIN_DEV,drive=d$i,bus=scsi0.0")
    done
fi
[[ -n $QMP ]] && ARGS+=(-qmp "unix:$QMP,server=on,wait=off")
[[ -n $INCOMING ]] && ARGS+=(-incoming "$INCOMING")
ARGS+=("${QEXTRA[@]}")

say "accel=$ACCEL smp=$SMP memory=${MEM}M workload=$WORKLOAD log=$LOG"
say "$QEMU ${ARGS[*]}"

if ((DRYRUN)); then
    printf '%q ' "$QEMU" "${ARGS[@]}"
    echo
    exit 0
fi
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
if [[ $WORKLOAD == shell ]]; then
    exec "$QEMU" "${ARGS[@]}"
fi

# ---- run ------------------------------------------------------------------------------------
QPID=""
cleanup() {
    if [[ -n $QPID ]] && kill -0 "$QPID" 2>/dev/null; then
        kill "$QPID" 2>/dev/null || true
        sleep 1
        kill -KILL "$QPID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

T0=$(date +%s.%N)
"$QEMU" "${ARGS[@]}" </dev/null >"$QLOG" 2>&1 &
QPID=$!

off=0
stream() {
    ((QUIET)) && return 0
    local size
    size=$(stat -c %s "$LOG")
    if ((size > off)); then
        # Without carriage returns and the firmware's terminal escape sequences.
        tail -c +$((off + 1)) "$LOG" | head -c $((size - off)) | tr -d '\r' | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g'
        off=$size
    fi
}

status=running
done_at=""
warned=0
while :; do
    stream
    if ! kill -0 "$QPID" 2>/dev/null; then
        status=exited
        break
    fi
    now=$(date +%s)
    if [[ -z $done_at ]] && grep -aq 'VUS-DONE' "$LOG"; then done_at=$now; fi
    # The guest powers off after VUS-DONE; give QEMU some seconds to exit on its own.
    if [[ -n $done_at ]] && ((now - done_at > 20)); then
        say "the guest printed VUS-DONE but QEMU did not exit; stopping QEMU (pid $QPID)"
        status=killed-after-done
        break
    fi
    # QEMU opens vhost-user sockets and waits for the backend's replies before the machine
    # starts: no console output at all means it is stuck there (or the firmware is).
    if ((!warned)) && [[ ! -s $LOG ]] && ((now - ${T0%.*} > 60)); then
        say "warning: no console output after 60 s; QEMU may be stuck in the vhost-user handshake (is the backend answering?)"
        warned=1
    fi
    if awk -v a="$T0" -v b="$(date +%s.%N)" -v t="$TIMEOUT" 'BEGIN { exit !(b - a > t) }'; then
        say "timeout after ${TIMEOUT}s; stopping QEMU (pid $QPID)"
        status=timeout
        break
    fi
    sleep 0.5
done
qrc=0
if [[ $status == exited ]]; then
    wait "$QPID" || qrc=$?
else
    cleanup
    wait "$QPID" 2>/dev/null || true
fi
QPID=""
stream
T1=$(date +%s.%N)
WALL=$(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }')

if [[ -s $QLOG ]]; then
    say "QEMU output ($QLOG):"
    sed 's/^/  qemu: /' "$QLOG" >&2
fi

# ---- host-side comparison with the target ---------------------------------------------------
# A VUS- line may follow the firmware's terminal escapes on the same line.
RESULTS=$(tr -d '\r' <"$LOG" | grep -aoE 'VUS-(INFO|RESULT|DONE)( .*|$)' || true)
HOSTLINES=""
hostresult() { HOSTLINES+="VUS-RESULT $*"$'\n'; }
if ((${#EXPECT[@]})); then
    mapfile -t disks < <(grep '^VUS-INFO disk ' <<<"$RESULTS" || true)
    for i in "${!EXPECT[@]}"; do
        url=${EXPECT[$i]} n=$((i + 1))
        line=${disks[$i]:-}
        if [[ -z $line ]]; then
            hostresult "host_target_$n FAIL guest reported no disk number $n for $url"
            continue
        fi
        g_dev=$(awk '{ print $3 }' <<<"$line")
        g_size=$(grep -o 'size_bytes=[0-9]*' <<<"$line" | head -n1 | cut -d= -f2)
        g_lbs=$(grep -o 'logical_block_size=[0-9]*' <<<"$line" | cut -d= -f2)
        g_vendor=$(sed -n 's/.* vendor="\([^"]*\)".*/\1/p' <<<"$line")
        g_product=$(sed -n 's/.* product="\([^"]*\)".*/\1/p' <<<"$line")
        g_rev=$(sed -n 's/.* revision="\([^"]*\)".*/\1/p' <<<"$line")
        if ! rc16=$(iscsi-readcapacity16 "$url" 2>&1) || ! inq=$(iscsi-inq "$url" 2>&1); then
            hostresult "host_target_$n FAIL cannot query $url from the host: $(tail -n1 <<<"$rc16$inq")"
            continue
        fi
        t_size=$(sed -n 's/^Total size:\([0-9]*\).*/\1/p' <<<"$rc16")
        t_lbs=$(sed -n 's/^LOGICAL BLOCK LENGTH IN BYTES:\([0-9]*\).*/\1/p' <<<"$rc16")
        trim() { sed 's/[[:space:]]*$//'; }
        t_vendor=$(sed -n 's/^Vendor://p' <<<"$inq" | trim)
        t_product=$(sed -n 's/^Product://p' <<<"$inq" | trim)
        t_rev=$(sed -n 's/^Revision://p' <<<"$inq" | trim)
        diffs=""
        [[ $g_size == "$t_size" ]] || diffs+=" size guest=$g_size target=$t_size;"
        [[ $g_lbs == "$t_lbs" ]] || diffs+=" block_size guest=$g_lbs target=$t_lbs;"
        if ((INQ_COMPARE)); then
            [[ $g_vendor == "$t_vendor" ]] || diffs+=" vendor guest='$g_vendor' target='$t_vendor';"
            [[ $g_product == "$t_product" ]] || diffs+=" product guest='$g_product' target='$t_product';"
            [[ $g_rev == "$t_rev" ]] || diffs+=" revision guest='$g_rev' target='$t_rev';"
        fi
        what="size=$t_size block_size=$t_lbs"
        ((INQ_COMPARE)) && what+=" vendor='$t_vendor' product='$t_product' revision='$t_rev'"
        if [[ -z $diffs ]]; then
            hostresult "host_target_$n PASS $g_dev matches $url: $what"
        else
            hostresult "host_target_$n FAIL $g_dev differs from $url:$diffs"
        fi
    done
fi

# ---- verdict --------------------------------------------------------------------------------
echo
echo "=== guest results ($WORKLOAD, $WALL s wall, QEMU $status, exit status $qrc; serial log $LOG) ==="
[[ -n $RESULTS ]] && printf '%s\n' "$RESULTS"
[[ -n $HOSTLINES ]] && printf '%s' "$HOSTLINES"

all="$RESULTS"$'\n'"$HOSTLINES"
nfail=$(grep -c '^VUS-RESULT [^ ]* FAIL' <<<"$all" || true)
npass=$(grep -c '^VUS-RESULT [^ ]* PASS' <<<"$all" || true)
doneline=$(grep '^VUS-DONE' <<<"$RESULTS" | tail -n1 || true)
verdict=PASS
reason=""
if [[ $status == timeout ]]; then verdict=FAIL; reason+=" timeout after ${TIMEOUT}s;"; fi
if [[ -z $doneline ]]; then verdict=FAIL; reason+=" no VUS-DONE line;"; fi
if [[ -n $doneline && $doneline != *" fail=0"* ]]; then verdict=FAIL; reason+=" guest: $doneline;"; fi
if ((nfail > 0)); then verdict=FAIL; reason+=" $nfail check(s) failed;"; fi
if ((npass == 0)); then verdict=FAIL; reason+=" no check passed;"; fi
echo "=== $verdict: $npass passed, $nfail failed${reason:+ -${reason%;}} ==="
[[ $verdict == PASS ]]
