import Glibc
import ServerLog
import Synchronization

/// Readiness and shutdown notifications to the service manager (systemd's `Type=notify`,
/// sd_notify(3)) without libsystemd: one datagram of newline-separated `VAR=VALUE`
/// assignments to the AF_UNIX socket named in `$NOTIFY_SOCKET`. Without `NOTIFY_SOCKET` every
/// call does nothing; a notification that cannot be sent is logged once and never stops the
/// server.
public enum ServiceNotify {
    public struct SendError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Sends one datagram with `assignments` (e.g. `["READY=1", "STATUS=serving"]`) to `address`.
    public static func send(_ assignments: [String], to address: NotifySocketAddress) throws(SendError) {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SendError(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let message = Array(assignments.joined(separator: "\n").utf8)
        var sent: Int
        repeat {
            sent = address.withSockaddr { sockaddr, length in
                message.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sockaddr, length) }
            }
        } while sent < 0 && errno == EINTR
        guard sent == message.count else {
            let reason = sent < 0 ? String(cString: strerror(errno)) : "short send (\(sent) of \(message.count) bytes)"
            throw SendError(description: "sendto \(address): \(reason)")
        }
    }

    /// Sends `assignments` to `$NOTIFY_SOCKET`. Returns false when it is unset or unusable or
    /// the send failed (logged as a warning, once per process).
    @discardableResult
    public static func send(_ assignments: [String]) -> Bool {
        guard let raw = getenv("NOTIFY_SOCKET") else { return false }
        let value = String(cString: raw)
        guard let address = NotifySocketAddress(value) else {
            warnOnce("NOTIFY_SOCKET='\(value)' is not an absolute path or @abstract name; not notifying the service manager")
            return false
        }
        do {
            try send(assignments, to: address)
            return true
        } catch {
            warnOnce("cannot notify the service manager (\(error)); under systemd Type=notify the unit will time out")
            return false
        }
    }

    /// `READY=1` with a `STATUS=` line, once the server accepts connections; arranges
    /// `STOPPING=1` at exit, so that a shutdown is announced even where nobody calls
    /// `stopping()` first.
    ///
    /// No signal handling here on purpose: libdispatch routes a signal to its sources through
    /// a sigaction handler it installs when the first source for that signal registers, and
    /// the server's later `signal(SIGTERM, SIG_IGN)` would replace that handler, losing
    /// SIGTERM whenever the kernel delivers it to a thread that does not block it.
    public static func ready(status text: String) {
        send(["READY=1", statusAssignment(text)])
        guard !readySent.exchange(true, ordering: .acquiringAndReleasing) else { return }
        atexit { ServiceNotify.stoppingAtExit() }
    }

    /// `RELOADING=1` as a configuration reload begins, with the `MONOTONIC_USEC=` that
    /// systemd's Type=notify-reload requires beside it (sd_notify(3)); `ready(status:)` ends
    /// the reload.
    public static func reloading(status text: String) {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let microseconds = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
        send(["RELOADING=1", "MONOTONIC_USEC=\(microseconds)", statusAssignment(text)])
    }

    /// A new `STATUS=` line (shown by `systemctl status`).
    public static func status(_ text: String) {
        send([statusAssignment(text)])
    }

    /// `STOPPING=1`, at most once per process: call it as shutdown begins (systemd then shows
    /// the unit "deactivating" while in-flight I/O drains).
    public static func stopping() {
        guard !stoppingSent.exchange(true, ordering: .acquiringAndReleasing) else { return }
        send(["STOPPING=1", statusAssignment("shutting down")])
    }

    /// One assignment per line: a newline in the text would start a new one.
    static func statusAssignment(_ text: String) -> String {
        "STATUS=" + String(text.map { $0.isNewline ? " " : $0 })
    }

    private static func stoppingAtExit() {
        stopping()
    }

    private static func warnOnce(_ message: String) {
        guard !warned.exchange(true, ordering: .relaxed) else { return }
        Log.warning(message)
    }

    private static let readySent = Atomic<Bool>(false)
    private static let stoppingSent = Atomic<Bool>(false)
    private static let warned = Atomic<Bool>(false)
}
