#!/usr/bin/env bash
# Run a private tgtd (Linux SCSI target framework, user space) for tests and demos.
#
# Usage:
#   Scripts/tgt.sh start WORKDIR PORT CTLPORT IQN LUNFILE[:SIZE_MB]...
#       Starts `tgtd -f --iscsi portal=127.0.0.1:PORT -C CTLPORT` in the background
#       (pid in WORKDIR/tgtd.pid, log in WORKDIR/tgtd.log), creates each missing LUNFILE as a
#       sparse file of SIZE_MB MiB, creates target tid 1 named IQN with LUN 1..N backed by the
#       files in the order given, allows all initiators, and waits until the portal answers
#       an INQUIRY for LUN 1. LUN 0 of a tgt target is the controller; the disks are LUN 1..N:
#       iscsi://127.0.0.1:PORT/IQN/1 ... iscsi://127.0.0.1:PORT/IQN/N
#   Scripts/tgt.sh stop WORKDIR CTLPORT
#       Deletes the target (--force) and the tgtd system, waits for the pid in WORKDIR/tgtd.pid
#       to exit and kills that pid only if it does not. Safe to call when nothing runs.
#   Scripts/tgt.sh status WORKDIR CTLPORT
#       Prints `tgtadm --mode target --op show` of the running tgtd.
#
# Example:
#   Scripts/tgt.sh start guest/out/tgt 3270 3271 iqn.2024-01.test:vus lun1.img:256 lun2.img:128
#   Scripts/tgt.sh stop guest/out/tgt 3271
# Relative LUNFILE paths are relative to WORKDIR. Installs tgt and libiscsi-bin if missing.
set -euo pipefail

die() { echo "tgt.sh: error: $*" >&2; exit 1; }
say() { echo "tgt.sh: $*" >&2; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

ensure_packages() {
    local missing=()
    command -v tgtd >/dev/null 2>&1 || missing+=(tgt)
    command -v iscsi-inq >/dev/null 2>&1 || missing+=(libiscsi-bin)
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
            apt-get update >/dev/null
            apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
        }
    fi
}

configure_target() {
    local ctlport=$1 iqn=$2 lun=0 file
    shift 2
    local tadm=(tgtadm -C "$ctlport" --lld iscsi)
    "${tadm[@]}" --op new --mode target --tid 1 -T "$iqn" || return 1
    for file in "$@"; do
        lun=$((lun + 1))
        "${tadm[@]}" --op new --mode logicalunit --tid 1 --lun "$lun" -b "$file" || return 1
    done
    "${tadm[@]}" --op bind --mode target --tid 1 -I ALL || return 1
}

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

cmd_start() {
    (($# >= 5)) || usage
    local workdir=$1 port=$2 ctlport=$3 iqn=$4
    shift 4
    [[ $port =~ ^[0-9]+$ && $ctlport =~ ^[0-9]+$ ]] || die "PORT and CTLPORT must be numbers"
    ensure_packages
    mkdir -p "$workdir"
    workdir=$(cd "$workdir" && pwd)
    local pidfile=$workdir/tgtd.pid log=$workdir/tgtd.log
    if [[ -f $pidfile ]] && pid_alive "$(cat "$pidfile")"; then
        die "a tgtd from $workdir already runs (pid $(cat "$pidfile")); stop it first: $0 stop $workdir $ctlport"
    fi

    # Backing files, absolute paths.
    local files=() spec file size
    for spec in "$@"; do
        file=${spec%%:*}
        size=
        [[ $spec == *:* ]] && size=${spec##*:}
        [[ $file == /* ]] || file=$workdir/$file
        if [[ ! -e $file ]]; then
            [[ -n $size ]] || die "$file does not exist and no size was given (use FILE:SIZE_MB)"
            [[ $size =~ ^[0-9]+$ ]] || die "bad size '$size' in '$spec' (MiB, a number)"
            mkdir -p "$(dirname "$file")"
            truncate -s "${size}M" "$file"
            say "created sparse $file (${size} MiB)"
        fi
        files+=("$file")
    done

    # tgtd keeps running in the background after this script exits; its own session, so a
    # terminal's signals do not reach it.
    : >"$log"
    setsid tgtd -f --iscsi "portal=127.0.0.1:$port" -C "$ctlport" >>"$log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pidfile"
    say "tgtd pid $pid, portal 127.0.0.1:$port, control port $ctlport, log $log"

    local i ok=0
    for ((i = 0; i < 100; i++)); do
        pid_alive "$pid" || { cat "$log" >&2; rm -f "$pidfile"; die "tgtd exited at start (port $port or control port $ctlport in use?)"; }
        if tgtadm -C "$ctlport" --mode sys --op show >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.1
    done
    ((ok)) || { cmd_stop "$workdir" "$ctlport"; die "tgtd control port $ctlport did not answer"; }

    if ! configure_target "$ctlport" "$iqn" "${files[@]}"; then
        cmd_stop "$workdir" "$ctlport"
        die "configuring the target failed (see above)"
    fi

    # The portal must answer an iSCSI login + INQUIRY on LUN 1.
    local url=iscsi://127.0.0.1:$port/$iqn/1 out=""
    ok=0
    for ((i = 0; i < 50; i++)); do
        if grep -q 'unable to bind' "$log"; then
            out="tgtd could not bind 127.0.0.1:$port (in use?)"
            break
        fi
        if out=$(iscsi-inq "$url" 2>&1); then ok=1; break; fi
        sleep 0.2
    done
    if ((!ok)); then
        echo "$out" >&2
        cat "$log" >&2
        cmd_stop "$workdir" "$ctlport"
        die "the portal 127.0.0.1:$port does not answer ($url)"
    fi
    say "target $iqn ready with ${#files[@]} LUN(s):"
    for i in "${!files[@]}"; do
        echo "iscsi://127.0.0.1:$port/$iqn/$((i + 1))"
    done
}

cmd_stop() {
    (($# == 2)) || usage
    local workdir=$1 ctlport=$2
    local pidfile=$workdir/tgtd.pid pid=""
    [[ -f $pidfile ]] && pid=$(cat "$pidfile")
    if ! pid_alive "$pid"; then
        say "no tgtd running for $workdir"
        rm -f "$pidfile"
        return 0
    fi
    # tgtd ignores SIGTERM while targets exist: delete them, then the system.
    local tid
    for tid in $(tgtadm -C "$ctlport" --lld iscsi --mode target --op show 2>/dev/null |
        sed -n 's/^Target \([0-9]*\):.*/\1/p'); do
        tgtadm -C "$ctlport" --lld iscsi --mode target --op delete --force --tid "$tid" || true
    done
    tgtadm -C "$ctlport" --mode sys --op delete >/dev/null 2>&1 || true
    local i
    for ((i = 0; i < 50; i++)); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    if pid_alive "$pid"; then
        say "tgtd $pid did not exit; sending SIGKILL to pid $pid"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    fi
    pid_alive "$pid" && die "tgtd $pid is still running"
    rm -f "$pidfile"
    say "tgtd $pid stopped"
}

cmd_status() {
    (($# == 2)) || usage
    tgtadm -C "$2" --lld iscsi --mode target --op show
}

(($# >= 1)) || usage
case $1 in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) shift; cmd_status "$@" ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
