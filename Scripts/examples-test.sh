#!/usr/bin/env bash
# Checks that what Examples/ and the man page show works, against the real server, a real tgtd
# and real QEMU processes (Docs/OPERATIONS.md lists the examples):
#   systemd    Examples/systemd/vhost-user-scsi@.service passes `systemd-analyze verify` and
#              scores "OK" in `systemd-analyze security`; its sandbox allows every system call
#              and address family the server used under strace while QEMU connected to it; its
#              ExecStart runs (once the server has --config) and its ExecReload makes that server
#              reload (RELOADING=1, then READY=1); its sockets match the example
#              configuration. PID 1 here is not systemd, so the unit itself is not started.
#   notify     with NOTIFY_SOCKET (a path, an abstract name) the server sends READY=1 only when
#              its socket accepts connections and STOPPING=1 on SIGTERM, and exits 0; with an
#              unusable NOTIFY_SOCKET it still serves
#   qemu       Examples/qemu-one-queue.sh, qemu-multi-queue.sh and the libvirt domain's
#              <qemu:commandline> start QEMU (paused) on the server: the vhost-user-scsi-pci
#              device exists with the expected num_queues (QMP) and the server saw the frontend
#   libvirt    Examples/libvirt-domain.xml is well-formed and valid for libvirt's schema
#   install    the binaries need no Swift runtime on the host (built with --static-swift-stdlib,
#              as Docs/OPERATIONS.md installs them)
#   man        Docs/vhost-user-scsi.8 renders without warnings and names every option the
#              server's --help prints
#   migration  the steps of Examples/MIGRATION.md on one machine: two servers on one LUN, the
#              example QEMU command line on both sides, -incoming, Scripts/migtool.py migrate
#              (the VM is paused: Scripts/migrate-test.sh migrates a guest under I/O)
#
# Usage: Scripts/examples-test.sh BIN_DIR [--qemu PATH]
#   BIN_DIR    the build's bin directory, with vhost-user-scsi and vhost-user-scsi-ctl
#              (swift build -c release --static-swift-stdlib --show-bin-path)
#   --qemu     QEMU binary for the examples (default qemu-system-x86_64)
# Prints one PASS/FAIL line per check (SKIP for a check this build cannot run yet), then
# "N passed, M failed"; exits 1 if anything failed, 2 on a usage error.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
examples=$root/Examples
die() { echo "examples-test: error: $*" >&2; exit 2; }

bin_dir=""
qemu=qemu-system-x86_64
while (($#)); do
    case $1 in
        --qemu) (($# >= 2)) || die "--qemu needs a value"; qemu=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1'" ;;
        *) [[ -z $bin_dir ]] || die "one BIN_DIR only"; bin_dir=$1; shift ;;
    esac
done
[[ -n $bin_dir ]] || die "usage: Scripts/examples-test.sh BIN_DIR [--qemu PATH]"
server=$(realpath "$bin_dir/vhost-user-scsi" 2>/dev/null) && [[ -x $server ]] || die "no vhost-user-scsi in $bin_dir"
command -v "$qemu" >/dev/null || die "QEMU '$qemu' not found"
[[ $qemu == */* ]] && qemu=$(realpath "$qemu")
for tool in systemd-analyze xmllint virt-xml-validate groff man strace python3 tgtd; do
    command -v "$tool" >/dev/null || die "$tool is missing (Scripts/install-deps.sh installs it)"
done

# Only the runs below that set it talk to a notification socket (not a service manager this
# script may run under).
unset NOTIFY_SOCKET
T0=$SECONDS
work=$(mktemp -d /tmp/vus-examples.XXXXXX)
passed=0
failed=0
skipped=0
check() { # NAME 0|1 DETAIL
    if [[ $2 == 0 ]]; then
        echo "examples-test: PASS $1 ${3:-}"
        passed=$((passed + 1))
    else
        echo "examples-test: FAIL $1 ${3:-}"
        failed=$((failed + 1))
    fi
}
skip() { echo "examples-test: SKIP $1 ${2:-}"; skipped=$((skipped + 1)); }

pids=()
stop_pid() { # PID: TERM, wait up to 10 s, then KILL; only processes this script started
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
ctl=""
cleanup() {
    local pid
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    [[ -n $ctl ]] && "$here/tgt.sh" stop "$work/tgt" "$ctl" >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_socket() { # PATH PID: until PATH is a socket (10 s), false if PID exits first
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -S $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
reap() { # PID: wait for it (10 s); sets $status to its exit status, or "timeout"
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$1" 2>/dev/null; then status=timeout; return; fi
    wait "$1"
    status=$?
}
qmp() { python3 "$here/migtool.py" qmp "$@"; }

# ---- a target with two LUNs ---------------------------------------------------------------------
port=$(free_port)
ctl=$((1000 + RANDOM % 9000))
while [[ -e /var/run/tgtd/socket.$ctl ]]; do ctl=$((1000 + RANDOM % 9000)); done
iqn=iqn.2026-11.org.vhost-user-scsi:examples
url1=iscsi://127.0.0.1:$port/$iqn/1
url2=iscsi://127.0.0.1:$port/$iqn/2
mkdir -p "$work/tgt"
"$here/tgt.sh" start "$work/tgt" "$port" "$ctl" "$iqn" lun1.img:64 lun2.img:64 >/dev/null 2>"$work/tgt.out" ||
    { cat "$work/tgt.out" >&2; ctl=""; die "tgtd did not start"; }
help_text=$("$server" --help 2>&1)

# ---- notify: READY=1 once the socket accepts connections, STOPPING=1 on SIGTERM -----------------
# The listener stands in for systemd: it logs every datagram and, on READY=1, connects to the
# server's vhost-user socket at once.
cat >"$work/notify-listener.py" <<'EOF'
import socket, sys, time
address, vhost_socket, log = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + address[1:] if address.startswith("@") else address)
s.settimeout(60)
with open(log, "a") as out:
    out.write("listening\n")
    out.flush()
    while True:
        assignments = s.recv(4096).decode().split("\n")
        note = ""
        if "READY=1" in assignments:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                c.connect(vhost_socket)
                note = " connect=ok"
            except OSError as e:
                note = " connect=failed(%s)" % e
            c.close()
        out.write("%.3f %s%s\n" % (time.time(), "|".join(assignments), note))
        out.flush()
        if "STOPPING=1" in assignments:
            break
EOF
notify_run() { # NAME NOTIFY_SOCKET
    local name=$1 address=$2 sock=$work/$1.sock log=$work/$1.notify lpid spid rc ready
    : >"$log"
    python3 "$work/notify-listener.py" "$address" "$sock" "$log" &
    lpid=$!
    pids+=("$lpid")
    for ((i = 0; i < 50; i++)); do grep -q listening "$log" && break; sleep 0.1; done
    NOTIFY_SOCKET=$address "$server" --socket "$sock" --lun "$url1" >"$work/$name.log" 2>&1 &
    spid=$!
    pids+=("$spid")
    for ((i = 0; i < 100; i++)); do grep -q READY=1 "$log" && break; kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
    ready=$(grep READY=1 "$log" || true)
    check "${name}_ready_when_accepting" "$([[ $ready == *"READY=1|STATUS="*" connect=ok" ]]; echo $?)" \
        "(${ready:-no READY=1}; log $work/$name.log)"
    kill -TERM "$spid"
    reap "$spid"
    rc=$status
    check "${name}_sigterm_exit_0" "$([[ $rc == 0 ]]; echo $?)" "(exit $rc)"
    for ((i = 0; i < 20; i++)); do grep -q STOPPING=1 "$log" && break; sleep 0.1; done
    check "${name}_stopping" "$(grep -q 'STOPPING=1' "$log"; echo $?)" "(datagrams: $(tail -n +2 "$log" | cut -d' ' -f2- | tr '\n' ';'))"
    stop_pid "$lpid"
}
notify_run notify-path "$work/notify-path.notify.sock"
notify_run notify-abstract "@vus-examples-$$-$RANDOM"

# An unusable NOTIFY_SOCKET is a warning, never a failure.
NOTIFY_SOCKET=$work/nobody-listens "$server" --socket "$work/notify-none.sock" --lun "$url1" >"$work/notify-none.log" 2>&1 &
spid=$!
pids+=("$spid")
wait_socket "$work/notify-none.sock" "$spid" && rc=0 || rc=1
kill -TERM "$spid" 2>/dev/null
reap "$spid"
st=$status
check notify_absent_listener_still_serves "$([[ $rc == 0 && $st == 0 ]] && grep -q 'cannot notify' "$work/notify-none.log"; echo $?)" \
    "(socket created: $([[ $rc == 0 ]] && echo yes || echo no), exit $st, $(grep -o 'WARNING.*' "$work/notify-none.log" | head -n 1 | cut -c1-80))"

# ---- qemu: the example command lines on the server (under strace, for the sandbox check) -------
vsock=$work/vus.sock
strace -f -qq -o "$work/server.strace" "$server" --socket "$vsock" --num-queues 4 --lun "$url1" --lun "$url2" \
    >"$work/server.log" 2>&1 &
strace_pid=$!
pids+=("$strace_pid")
wait_socket "$vsock" "$strace_pid" || { cat "$work/server.log" >&2; die "the server did not start under strace"; }
server_pid=$(pgrep -P "$strace_pid" | head -n 1)

# The libvirt domain's <qemu:commandline> as a script: its arguments with the test's socket.
mapfile -t libvirt_args < <(python3 - "$examples/libvirt-domain.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
ns = {"qemu": "http://libvirt.org/schemas/domain/qemu/1.0"}
for arg in ET.parse(sys.argv[1]).getroot().findall("qemu:commandline/qemu:arg", ns):
    print(arg.get("value"))
EOF
)
cat >"$work/qemu-libvirt.sh" <<'EOF'
#!/bin/sh
# What libvirt would start for Examples/libvirt-domain.xml, reduced to the shared memory and
# the <qemu:commandline> arguments (with the socket replaced). Usage: SOCKET ARGS...
socket=$1; shift
exec "$QEMU" -machine "q35,accel=$ACCEL" -smp 4 -m "$MEMORY" \
    -object "memory-backend-memfd,id=mem,size=$MEMORY,share=on" -numa node,memdev=mem "$@"
EOF
chmod +x "$work/qemu-libvirt.sh"
socket_in_xml=$(printf '%s\n' "${libvirt_args[@]}" | sed -n 's/.*path=\([^,]*\).*/\1/p' | head -n 1)

qemu_example() { # NAME EXPECTED-QUEUES SCRIPT [ARGS...]
    local name=$1 want=$2 script=$3 q=$work/$1.qmp qpid st conns0 conns1 type nq pci
    shift 3
    conns0=$(grep -c 'frontend connected' "$work/server.log")
    rm -f "$q"
    QEMU=$qemu ACCEL=tcg MEMORY=256M "$script" "$vsock" "$@" -S -display none \
        -qmp "unix:$q,server=on,wait=off" >"$work/$name.qemu.log" 2>&1 &
    qpid=$!
    pids+=("$qpid")
    st=$(python3 "$here/migtool.py" wait-status "$q" prelaunch 30 2>&1)
    type=$(qmp "$q" qom-get '{"path": "/machine/peripheral/vscsi0", "property": "type"}' 2>&1)
    nq=$(qmp "$q" qom-get '{"path": "/machine/peripheral/vscsi0", "property": "num_queues"}' 2>&1)
    pci=$(qmp "$q" query-pci 2>&1 | python3 -c 'import json, sys
print(" ".join(d.get("qdev_id", "") for b in json.load(sys.stdin) for d in b["devices"] if d.get("qdev_id")))' 2>&1)
    conns1=$(grep -c 'frontend connected' "$work/server.log")
    check "${name}_device" "$([[ $st == prelaunch && $type == '"vhost-user-scsi-pci"' && $nq == "$want" && $pci == *vscsi0* ]]; echo $?)" \
        "(QEMU $st; vscsi0 is $type with num_queues $nq, want $want; on the PCI bus: ${pci:-nothing})"
    check "${name}_server_saw_frontend" "$((conns1 > conns0 ? 0 : 1))" "(server: $((conns1 - conns0)) new frontend connection(s))"
    qmp "$q" quit >/dev/null 2>&1
    reap "$qpid"
    st=$status
    check "${name}_qemu_exit_0" "$([[ $st == 0 ]]; echo $?)" "(exit $st; log $work/$name.qemu.log)"
}
qemu_example qemu_one_queue 1 "$examples/qemu-one-queue.sh"
qemu_example qemu_multi_queue 4 "$examples/qemu-multi-queue.sh"
QUEUES=2 qemu_example qemu_multi_queue_2 2 "$examples/qemu-multi-queue.sh"
libvirt_run=("${libvirt_args[@]/path=$socket_in_xml/path=$vsock}")
qemu_example libvirt_commandline 4 "$work/qemu-libvirt.sh" "${libvirt_run[@]}"

kill -TERM "$server_pid"
reap "$strace_pid"
st=$status
check server_sigterm_after_qemu "$([[ $st == 0 ]] && grep -q 'shut down cleanly' "$work/server.log"; echo $?)" "(exit $st)"
check server_no_errors "$(! grep -E 'ERROR|fatal error|precondition' "$work/server.log" >/dev/null; echo $?)" \
    "$(grep -E 'ERROR|fatal error|precondition' "$work/server.log" | head -n 2)"

# ---- libvirt ------------------------------------------------------------------------------------
out=$(xmllint --noout "$examples/libvirt-domain.xml" 2>&1)
rc=$?
check libvirt_xml_well_formed "$([[ $rc == 0 && -z $out ]]; echo $?)" "$out"
out=$(virt-xml-validate "$examples/libvirt-domain.xml" domain 2>&1)
rc=$?
check libvirt_xml_valid "$rc" "($out)"
check libvirt_memory_shared "$(python3 - "$examples/libvirt-domain.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
d = ET.parse(sys.argv[1]).getroot()
ok = d.find("memoryBacking/source").get("type") == "memfd" and d.find("memoryBacking/access").get("mode") == "shared"
print(0 if ok else 1)
EOF
)" "(memoryBacking: memfd, shared)"

# ---- systemd ------------------------------------------------------------------------------------
unit=$examples/systemd/vhost-user-scsi@.service
mkdir -p "$work/units" "$work/man/man8"
sed "s#/usr/local/bin/vhost-user-scsi#$server#" "$unit" >"$work/units/vhost-user-scsi@.service"
cp "$root/Docs/vhost-user-scsi.8" "$work/man/man8/"
# Documentation=man:vhost-user-scsi(8) is checked too: the page is found through MANPATH.
out=$(cd "$work/units" && MANPATH=$work/man: systemd-analyze verify ./vhost-user-scsi@vm1.service 2>&1)
rc=$?
check unit_verify "$([[ $rc == 0 && -z $out ]]; echo $?)" "(systemd-analyze verify: exit $rc${out:+: $(tr '\n' ' ' <<<"$out")})"
out=$(cd "$work/units" && systemd-analyze security --offline=true --threshold=20 ./vhost-user-scsi@vm1.service 2>&1)
rc=$?
check unit_security_ok "$rc" "($(grep -o 'Overall exposure level.*' <<<"$out" | sed 's/[^ -~]//g'), at most 2.0 wanted)"

# The sandbox against what the server did under strace: handshakes with 4 QEMUs, 2 LUNs, SIGTERM.
sandbox=$(python3 - "$unit" "$work/server.strace" <<'EOF'
import re, subprocess, sys
unit, trace = open(sys.argv[1]).read(), open(sys.argv[2]).read()

def expand(group, seen=None):
    seen = set() if seen is None else seen
    names = set()
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word.startswith("@"):
            if word not in seen:
                seen.add(word)
                names |= expand(word, seen)
        else:
            names.add(word)
    return names

# systemd.exec(5): the first SystemCallFilter= line makes an allow list (or, with ~, a deny
# list); later lines add to it or, with ~, take from it.
allowed, denied = None, set()
for value in re.findall(r"^SystemCallFilter=(.*)$", unit, re.M):
    deny = value.startswith("~")
    items = set()
    for word in value.lstrip("~").split():
        items |= expand(word) if word.startswith("@") else {word}
    if allowed is None and not denied:
        allowed, denied = (None, items) if deny else (items, set())
    elif allowed is not None:
        allowed = allowed - items if deny else allowed | items
    else:
        denied = denied | items if deny else denied - items
used = set(re.findall(r"^\d+ +([a-z0-9_]+)\(", trace, re.M))
families = set(re.findall(r"socket\((AF_[A-Z0-9]+)", trace))
allowed_families = set(" ".join(re.findall(r"^RestrictAddressFamilies=(.*)$", unit, re.M)).split())
wx = re.findall(r"^\d+ +(?:mmap|mprotect)\(.*PROT_EXEC.*", trace, re.M)
wx = [l for l in wx if "PROT_WRITE" in l or l.split()[1].startswith("mprotect")]
refused = used - allowed if allowed is not None else used & denied
print("syscalls %d %s" % (len(used), " ".join(sorted(refused))))
print("families %s %s" % (",".join(sorted(families)), ",".join(sorted(families - allowed_families))))
print("wx %d" % len(wx))
EOF
)
read -r _ nused denied <<<"$(grep '^syscalls' <<<"$sandbox")"
check unit_syscall_filter_allows_server "$([[ -n $nused && -z ${denied:-} ]]; echo $?)" \
    "(${nused:-?} system calls used under strace${denied:+; filtered out: $denied})"
read -r _ fams badfams <<<"$(grep '^families' <<<"$sandbox")"
check unit_address_families_allow_server "$([[ -n $fams && -z ${badfams:-} ]]; echo $?)" "(used: $fams${badfams:+; not allowed: $badfams})"
wx=$(sed -n 's/^wx //p' <<<"$sandbox")
check unit_memory_deny_write_execute "$([[ $wx == 0 ]]; echo $?)" "($wx writable+executable or made-executable mappings)"

# The example configuration and the unit agree: its sockets are in the instance's RuntimeDirectory.
agree=$(python3 - "$examples/vhost-user-scsi.json" "$unit" <<'EOF'
import json, re, sys
config = json.load(open(sys.argv[1]))
runtime = "/run/" + re.search(r"^RuntimeDirectory=(.*)$", open(sys.argv[2]).read(), re.M).group(1).replace("%i", "vm1") + "/"
paths = [config["control_socket"]] + [c["socket"] for c in config["controllers"]]
bad = [p for p in paths if not p.startswith(runtime)]
print(("ok %d sockets in %s" % (len(paths), runtime)) if not bad else "outside %s: %s" % (runtime, " ".join(bad)))
EOF
)
check unit_config_sockets_in_runtime_directory "$([[ $agree == ok* ]]; echo $?)" "($agree)"

# ExecStart for real, as systemd would run it for vm1: the specifiers and ${CHAP_USER} expanded,
# the configuration pointing at this tgtd (which then requires CHAP), the secret a credential.
if grep -q -- '--config' <<<"$help_text"; then
    tgtadm -C "$ctl" --lld iscsi --mode account --op new --user examples-host --password examples-secret1 &&
        tgtadm -C "$ctl" --lld iscsi --mode account --op bind --tid 1 --user examples-host || true
    mkdir -p "$work/credentials" "$work/run/vm1"
    echo examples-secret1 >"$work/credentials/chap"
    chmod 400 "$work/credentials/chap"  # as systemd hands LoadCredential= files over
    python3 - "$examples/vhost-user-scsi.json" "$work/vm1.json" "$work/run/vm1" "$url1" "$url2" "$(free_port)" <<'EOF'
import json, sys
src, dst, rundir, url1, url2, metrics = sys.argv[1:7]
c = json.load(open(src))
c["control_socket"] = c["control_socket"].replace("/run/vhost-user-scsi/vm1", rundir)
c["metrics_listen"] = "127.0.0.1:" + metrics
for ctrl in c["controllers"]:
    ctrl["socket"] = ctrl["socket"].replace("/run/vhost-user-scsi/vm1", rundir)
    urls = [url1, url2]
    for i, lun in enumerate(ctrl["luns"]):
        lun["url"] = urls[i % 2]
json.dump(c, open(dst, "w"), indent=2)
EOF
    cmd=$(sed -n 's/^ExecStart=//p' "$unit" | sed -e "s#/usr/local/bin/vhost-user-scsi#$server#" \
        -e "s#/etc/vhost-user-scsi/%i.json#$work/vm1.json#" -e "s#%d#$work/credentials#g" -e 's#%i#vm1#g' \
        -e 's#\${CHAP_USER}#examples-host#g')
    first_socket=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["controllers"][0]["socket"])' "$work/vm1.json")
    : >"$work/execstart.notify"
    python3 "$work/notify-listener.py" "$work/execstart.notify.sock" "$first_socket" "$work/execstart.notify" &
    pids+=("$!")
    sleep 0.3
    # shellcheck disable=SC2086 # the unit's ExecStart is split on spaces, as systemd does
    NOTIFY_SOCKET=$work/execstart.notify.sock $cmd >"$work/execstart.log" 2>&1 &
    spid=$!
    pids+=("$spid")
    for ((i = 0; i < 100; i++)); do grep -q READY=1 "$work/execstart.notify" && break; kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
    ready=$(grep READY=1 "$work/execstart.notify" || true)
    # ExecReload as systemctl reload runs it: the server reloads the unchanged file (nothing to
    # do) and tells the service manager RELOADING=1, then READY=1 again.
    reload_cmd=$(sed -n 's/^ExecReload=//p' "$unit" | sed -e "s#\$MAINPID#$spid#")
    $reload_cmd
    for ((i = 0; i < 100; i++)); do grep -q 'reload: 0 added' "$work/execstart.log" && break; sleep 0.1; done
    sleep 0.2
    reload_notes=$(grep -A1 RELOADING=1 "$work/execstart.notify" | cut -d' ' -f2 | tr '\n' ' ')
    kill -TERM "$spid" 2>/dev/null
    reap "$spid"
    st=$status
    check unit_execstart_runs "$([[ $ready == *connect=ok && $st == 0 ]]; echo $?)" \
        "(${ready:-no READY=1}; exit $st; log $work/execstart.log: $(tail -n 1 "$work/execstart.log"))"
    check unit_execreload_reloads "$(grep -q 'reload: 0 added, 0 removed, 2 unchanged, 0 not applied' "$work/execstart.log" &&
        [[ $reload_notes == RELOADING=1*READY=1* ]]; echo $?)" \
        "(${reload_cmd:-no ExecReload=}; notify: ${reload_notes:-none}; $(grep 'reload' "$work/execstart.log" | tail -n 1))"
    # The target takes logins without CHAP again, for the checks below.
    tgtadm -C "$ctl" --lld iscsi --mode account --op unbind --tid 1 --user examples-host || true
else
    skip unit_execstart_runs "(this server's --help has no --config yet: the unit's ExecStart needs it)"
fi

# ---- install: what Docs/OPERATIONS.md step 2 copies to a host ----------------------------------
# Built with --static-swift-stdlib, the binaries need no Swift toolchain on the host: only Debian
# libraries (libiscsi7 and the C/C++ runtimes).
for program in vhost-user-scsi vhost-user-scsi-ctl; do
    libs=$(ldd "$bin_dir/$program" 2>&1 | awk '{print $1}' | tr '\n' ' ')
    swift_libs=$(tr ' ' '\n' <<<"$libs" | grep -E 'libswift|libdispatch|libFoundation|libBlocksRuntime' | tr '\n' ' ')
    check "install_${program//-/_}_needs_no_swift_runtime" "$([[ -n $libs && -z $swift_libs ]]; echo $?)" \
        "(links: $libs${swift_libs:+; build with --static-swift-stdlib, Docs/OPERATIONS.md step 2})"
done

# ---- man page -----------------------------------------------------------------------------------
page=$root/Docs/vhost-user-scsi.8
out=$(groff -man -ww -z "$page" 2>&1)
check man_groff_no_warnings "$([[ -z $out ]]; echo $?)" "$out"
out=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)
check man_lint_no_warnings "$([[ -z $out ]]; echo $?)" "$out"
# Long lines, so that no option is split at the end of a line.
rendered=$(groff -man -Tascii -P-cbou -rLL=1000n "$page" 2>/dev/null)
missing=()
for option in $(grep -oE -- '--[a-z][a-z0-9-]*' <<<"$help_text" | sort -u); do
    grep -qE -- "(^|[^a-z0-9-])$option([^a-z0-9-]|\$)" <<<"$rendered" || missing+=("$option")
done
n=$(grep -oE -- '--[a-z][a-z0-9-]*' <<<"$help_text" | sort -u | wc -l)
check man_names_every_help_option "$([[ $n -gt 0 && ${#missing[@]} == 0 ]]; echo $?)" \
    "($n options in --help${missing[*]:+; missing from the man page: ${missing[*]}})"
missing=()
for option in $(sed -n 's/^ExecStart=//p' "$unit" | grep -oE -- '--[a-z][a-z0-9-]*'); do
    grep -qE -- "(^|[^a-z0-9-])$option([^a-z0-9-]|\$)" <<<"$rendered" || missing+=("$option")
done
check man_names_every_unit_option "$((${#missing[@]} == 0 ? 0 : 1))" "${missing[*]:+(missing: ${missing[*]})}"

# ---- migration walk-through ---------------------------------------------------------------------
mig_server() { # HOST
    "$server" --socket "$work/mig-$1.sock" --num-queues 4 --initiator-name "iqn.2026-11.example:host-$1" \
        --lun "$url1" >"$work/mig-server-$1.log" 2>&1 &
    eval "mig_server_$1=$!"
    pids+=("$!")
    wait_socket "$work/mig-$1.sock" "$!"
}
mig_qemu() { # HOST [ARGS...]
    local host=$1
    shift
    rm -f "$work/mig-$host.qmp"
    QEMU=$qemu ACCEL=tcg MEMORY=256M "$examples/qemu-multi-queue.sh" "$work/mig-$host.sock" -display none \
        -qmp "unix:$work/mig-$host.qmp,server=on,wait=off" "$@" >"$work/mig-qemu-$host.log" 2>&1 &
    eval "mig_qemu_$host=$!"
    pids+=("$!")
}
mig_server a && mig_server b && rc=0 || rc=1
check migration_servers_on_one_lun "$rc" "(two servers, initiator names host-a and host-b)"
mig_qemu a -S
mport=$(free_port)
mig_qemu b -incoming "tcp:127.0.0.1:$mport"
st=$(python3 "$here/migtool.py" wait-status "$work/mig-b.qmp" inmigrate 30 2>&1)
check migration_destination_inmigrate "$([[ $st == inmigrate ]]; echo $?)" "($st)"
summary=$(python3 "$here/migtool.py" migrate "$work/mig-a.qmp" "tcp:127.0.0.1:$mport" --bandwidth 256 --timeout 60 2>&1)
check migration_completed "$?" "($summary)"
sa=$(qmp "$work/mig-a.qmp" query-status 2>&1 | grep -o '"status": "[a-z-]*"')
nq=$(qmp "$work/mig-b.qmp" qom-get '{"path": "/machine/peripheral/vscsi0", "property": "num_queues"}' 2>&1)
check migration_source_postmigrate_destination_device "$([[ $sa == *postmigrate* && $nq == 4 ]]; echo $?)" \
    "(source $sa; destination vscsi0 num_queues $nq)"
qmp "$work/mig-a.qmp" quit >/dev/null 2>&1
qmp "$work/mig-b.qmp" quit >/dev/null 2>&1
reap "$mig_qemu_a"
st_a=$status
reap "$mig_qemu_b"
st_b=$status
kill -TERM "$mig_server_a" "$mig_server_b" 2>/dev/null
reap "$mig_server_a"
sa=$status
reap "$mig_server_b"
sb=$status
check migration_cleanup "$([[ $st_a == 0 && $st_b == 0 && $sa == 0 && $sb == 0 ]]; echo $?)" \
    "(QEMU exits $st_a/$st_b, servers $sa/$sb)"

echo "examples-test: $((SECONDS - T0)) s, $skipped skipped; logs in $work"
echo "$passed passed, $failed failed"
((failed == 0))
