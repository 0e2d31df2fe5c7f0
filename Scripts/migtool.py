#!/usr/bin/env python3
"""Helpers for Scripts/migrate-test.sh (python3 standard library only).

  migtool.py qmp SOCK COMMAND [JSON-ARGS]       run one QMP command, print its "return" as JSON
  migtool.py wait-status SOCK STATUS TIMEOUT    wait until query-status reports STATUS
  migtool.py migrate SOCK URI [options]         migrate, poll query-migrate until it ends,
                                                print one summary line (key=value) and exit 0
                                                only when the status is "completed"
      --bandwidth MIB      max-bandwidth in MiB/s (default 32)
      --downtime MS        downtime-limit in ms (default 300)
      --timeout S          give up (migrate_cancel) after S seconds (default 300)
      --hold-pid PID       slow target: SIGSTOP PID (the iSCSI target) as the migration starts;
                           when QMP stops answering (the migration thread holds QEMU's big
                           lock in vm_stop, waiting for the block backend to drain), wait
                           --hold-ms and SIGCONT PID (at the latest after 25 s)
      --hold-ms MS         (default 800)
  migtool.py write-marker FILE OFFSET           write "VUSMIG-STOP" at OFFSET of FILE (fsync)
  migtool.py check-lun FILE SLOTS GROUPS GEN    check the migrate workload's pattern slots in
                                                FILE (the LUN's backing file) after generation GEN
                                                (format in Docs/MIGRATION.md)
"""
import json
import os
import signal
import socket
import sys
import time


def now():
    return time.time()


class QMP:
    def __init__(self, path, timeout=10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        greeting = self._read()
        if "QMP" not in greeting:
            raise RuntimeError("no QMP greeting: %r" % greeting)
        self.cmd("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("QMP connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def settimeout(self, t):
        self.sock.settimeout(t)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        return self.reply(name)

    def reply(self, name="?"):
        while True:
            r = self._read()
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError("%s: %s" % (name, r["error"].get("desc", r["error"])))
            # events are skipped

    def close(self):
        self.sock.close()


def cmd_qmp(argv):
    sock, name = argv[0], argv[1]
    args = json.loads(argv[2]) if len(argv) > 2 else {}
    q = QMP(sock)
    print(json.dumps(q.cmd(name, **args)))


def cmd_wait_status(argv):
    sock, want, timeout = argv[0], argv[1], float(argv[2])
    deadline = now() + timeout
    last = "?"
    while now() < deadline:
        try:
            q = QMP(sock, timeout=5)
            last = q.cmd("query-status")["status"]
            q.close()
            if last == want:
                print(last)
                return 0
        except (OSError, EOFError, RuntimeError, ValueError) as e:
            last = "unreachable (%s)" % e
        time.sleep(0.2)
    print("status %s, wanted %s" % (last, want), file=sys.stderr)
    return 1


def cmd_migrate(argv):
    sock, uri = argv[0], argv[1]
    opts = {"--bandwidth": "32", "--downtime": "300", "--timeout": "300", "--hold-pid": "", "--hold-ms": "800"}
    i = 2
    while i < len(argv):
        if argv[i] not in opts or i + 1 >= len(argv):
            print("migtool: bad option %s" % argv[i], file=sys.stderr)
            return 2
        opts[argv[i]] = argv[i + 1]
        i += 2
    bw = int(opts["--bandwidth"]) << 20
    hold_pid = int(opts["--hold-pid"]) if opts["--hold-pid"] else 0
    q = QMP(sock)
    t0 = now()
    facts = {}
    q.cmd("migrate-set-parameters", **{"max-bandwidth": bw, "downtime-limit": int(opts["--downtime"])})
    q.cmd("migrate", uri=uri)
    deadline = t0 + float(opts["--timeout"])
    stopped_at = cont_at = stall_at = None
    info = {}
    try:
        if hold_pid:
            # The target is stopped for the whole RAM copy: the guest's requests wait there, so
            # some are in flight when QEMU stops the VM. Stopping it drains the device while
            # holding QEMU's big lock, so QMP stops answering: that is the moment; wait a
            # little more, then let the target go on.
            os.kill(hold_pid, signal.SIGSTOP)
            stopped_at = now()
            q.settimeout(0.5)
            limit = stopped_at + 25
            while now() < limit:
                try:
                    info = q.cmd("query-migrate")
                    if info.get("status") in ("completed", "failed", "cancelled"):
                        break
                    time.sleep(0.1)
                except socket.timeout:
                    stall_at = now()
                    break
            time.sleep(int(opts["--hold-ms"]) / 1000.0)
            os.kill(hold_pid, signal.SIGCONT)
            cont_at = now()
            q.settimeout(60)
            if stall_at:
                try:
                    q.reply("query-migrate")  # the answer to the stalled query
                except (RuntimeError, socket.timeout):
                    pass
        while True:
            if now() > deadline:
                q.cmd("migrate_cancel")
                info["status"] = "timeout"
                break
            info = q.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.2)
    finally:
        if stopped_at and cont_at is None:
            os.kill(hold_pid, signal.SIGCONT)
            cont_at = now()
    t1 = now()
    ram = info.get("ram", {})
    facts["status"] = info.get("status")
    facts["wall_s"] = "%.1f" % (t1 - t0)
    for k in ("total-time", "downtime", "setup-time"):
        if k in info:
            facts[k.replace("-", "_") + "_ms"] = info[k]
    for k in ("transferred", "normal", "duplicate", "dirty-sync-count", "pages-per-second", "dirty-pages-rate", "mbps"):
        if k in ram:
            facts["ram_" + k.replace("-", "_")] = ram[k]
    if hold_pid:
        facts["target_stopped_at"] = "%.3f" % stopped_at if stopped_at else "never"
        facts["qmp_stalled_at"] = "%.3f" % stall_at if stall_at else "never"
        facts["target_continued_at"] = "%.3f" % cont_at if cont_at else "never"
    if info.get("error-desc"):
        facts["error"] = json.dumps(info["error-desc"])
    print(" ".join("%s=%s" % kv for kv in facts.items()))
    return 0 if facts["status"] == "completed" else 1


def cmd_write_marker(argv):
    path, off = argv[0], int(argv[1])
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"VUSMIG-STOP\n".ljust(4096, b"\0"), off)
        os.fsync(fd)
    finally:
        os.close(fd)


SLOT = 65536
PAD = b"-" * 21


def slot_bytes(s, g):
    return b"".join(b"VUSMIG slot=%06d gen=%08d line=%04d %s\n" % (s, g, i, PAD) for i in range(1024))


def cmd_check_lun(argv):
    path, slots, groups, gen = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    spg = slots // groups
    bad = []
    checked = zero = 0
    with open(path, "rb") as f:
        for k in range(groups):
            # The last generation that wrote group k: g = k+1, k+1+groups, ... <= gen
            last = 0 if gen < k + 1 else k + 1 + groups * ((gen - 1 - k) // groups)
            for s in range(k * spg, (k + 1) * spg):
                f.seek(s * SLOT)
                got = f.read(SLOT)
                want = slot_bytes(s, last) if last else b"\0" * SLOT
                if last == 0:
                    zero += 1
                else:
                    checked += 1
                if got != want:
                    first = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), len(got))
                    line = got[first // 64 * 64: first // 64 * 64 + 63]
                    bad.append("slot %d (group %d, gen %d): first difference at byte %d of the slot, found %r"
                               % (s, k, last, first, line))
    for b in bad[:10]:
        print("  " + b)
    if bad:
        print("check-lun: FAIL %d of %d slots differ" % (len(bad), slots))
        return 1
    print("check-lun: PASS %d slots (%d bytes) hold exactly their last generation (final gen %d), %d never-written slots are zero"
          % (checked, checked * SLOT, gen, zero))
    return 0


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(sys.argv) >= 2 else 2
    sub, argv = sys.argv[1], sys.argv[2:]
    table = {"qmp": (cmd_qmp, 2), "wait-status": (cmd_wait_status, 3), "migrate": (cmd_migrate, 2),
             "write-marker": (cmd_write_marker, 2), "check-lun": (cmd_check_lun, 4)}
    if sub not in table or len(argv) < table[sub][1]:
        print(__doc__, file=sys.stderr)
        return 2
    return table[sub][0](argv) or 0


if __name__ == "__main__":
    sys.exit(main())
