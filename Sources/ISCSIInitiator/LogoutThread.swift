internal import CEventPoller
import Glibc
import ServerLog
import Synchronization

/// The one thread that drives every background logout of the process (`BackgroundLogout`):
/// one poll(2) over the sockets of all of them, each logout with its own deadline.
///
/// A thread of its own rather than a Dispatch queue, because a logout waits on a socket for up
/// to its timeout: one global-pool thread per logout (as before) ties up libdispatch's pool,
/// which on Linux starts about as wide as the CPU count and grows by about one thread a
/// second. With tens of sessions closed at once during an outage, the later logouts waited
/// seconds for a thread, and a live target's logouts queued behind a silent target's were
/// dropped unsent once their PDU timeout had passed. Here the cost is one thread however many
/// logouts run, and none waits for another.
///
/// poll rather than epoll: libiscsi says anew each round what it waits for
/// (`iscsi_which_events`), and the set is small and short-lived, so the array is rebuilt each
/// round. The thread starts with the first logout and stays for the life of the process,
/// asleep in poll without a timeout while no logout runs.
final class LogoutThread: @unchecked Sendable {
    // @unchecked: `handedOver` is behind its lock, `wakeFD` is set once; the rest is the
    // thread's own (locals of `run`).

    /// The thread's name (at most 15 bytes), as seen in /proc and by debuggers.
    static let name = "iscsi-logout"

    /// Started on first use; nil when it cannot be (said once, at error level).
    static let shared: LogoutThread? = LogoutThread()

    /// Logouts handed over and not yet taken by the thread.
    private let handedOver = Mutex<[BackgroundLogout]>([])
    /// An eventfd (nonblocking): `adopt` writes to it to wake the thread's poll.
    private let wakeFD: Int32

    /// libiscsi checks its PDU timeouts only when called: about once a second, it asks.
    private static let serviceIntervalMilliseconds = 1000
    /// How often a context with no socket or nothing to wait for is called (as `drive` does).
    private static let idleIntervalMilliseconds = 100

    private init?() {
        wakeFD = CEventPoller_eventfd()
        guard wakeFD >= 0 else {
            Log.error("iscsi: cannot start the logout thread: eventfd: \(String(cString: strerror(errno))); "
                      + "closed sessions drop their connections without a logout")
            return nil
        }
        let me = Unmanaged.passRetained(self).toOpaque()   // the thread's, for the life of the process
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let logoutThread = Unmanaged<LogoutThread>.fromOpaque(raw!).takeUnretainedValue()
            CEventPoller_set_thread_name(LogoutThread.name)
            logoutThread.run()
        }, me)
        guard rc == 0 else {
            Unmanaged<LogoutThread>.fromOpaque(me).release()
            close(wakeFD)
            Log.error("iscsi: cannot start the logout thread: pthread_create: \(String(cString: strerror(rc))); "
                      + "closed sessions drop their connections without a logout")
            return nil
        }
        pthread_detach(thread)
    }

    /// Hands `logout` (its logout PDU queued) to the thread. From any thread; never blocks
    /// on the target.
    func adopt(_ logout: BackgroundLogout) {
        handedOver.withLock { $0.append(logout) }
        var one: UInt64 = 1
        // Fails only when the counter is near overflow: the thread wakes up anyway.
        _ = write(wakeFD, &one, 8)
    }

    private func run() -> Never {
        var logouts: [BackgroundLogout] = []
        var fds: [pollfd] = []
        while true {
            logouts += handedOver.withLock { taken in
                defer { taken.removeAll() }
                return taken
            }
            // fds[0] is the wake-up; fds[i + 1] is logouts[i]'s socket, or -1 (poll skips it).
            fds.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0))
            var someIdle = false
            for logout in logouts {
                if let request = ISCSISession.pollRequest(logout.context) {
                    fds.append(request)
                } else {
                    fds.append(pollfd(fd: -1, events: 0, revents: 0))
                    someIdle = true
                }
            }
            let ready = poll(&fds, nfds_t(fds.count), waitMilliseconds(logouts, someIdle: someIdle))
            let pollError = ready < 0 && errno != EINTR ? "poll failed: errno \(errno)" : nil
            if ready > 0 && fds[0].revents != 0 {
                var count: UInt64 = 0
                _ = read(wakeFD, &count, 8)
            }
            let now = ISCSISession.monotonicNow()
            var kept = 0
            for (i, logout) in logouts.enumerated() {
                service(logout, revents: ready > 0 ? fds[i + 1].revents : 0, now: now, pollError: pollError)
                if logout.finished || logout.failure != nil {
                    logout.end()
                    BackgroundLogout.running.leave()
                } else {
                    logouts[kept] = logout
                    kept += 1
                }
            }
            logouts.removeLast(logouts.count - kept)
        }
    }

    /// Lets libiscsi handle what poll reported for `logout`; records why it must end, if it must.
    private func service(_ logout: BackgroundLogout, revents: Int16, now: Double, pollError: String?) {
        guard !logout.finished else { return }
        if let pollError {
            // Not knowing which socket is ready, no logout can go on: drop them all rather than spin.
            logout.fail(pollError)
        } else if let reason = ISCSISession.service(logout.context, revents: revents, finished: { logout.finished }) {
            logout.fail(reason)
        } else if !logout.finished && now >= logout.deadline {
            logout.fail("no answer within the logout timeout")
        }
    }

    /// Until the earliest deadline, at most a service interval; forever while no logout runs.
    private func waitMilliseconds(_ logouts: [BackgroundLogout], someIdle: Bool) -> Int32 {
        guard let earliest = logouts.lazy.map(\.deadline).min() else { return -1 }
        let cap = someIdle ? Self.idleIntervalMilliseconds : Self.serviceIntervalMilliseconds
        let untilDeadline = ((earliest - ISCSISession.monotonicNow()) * 1000).rounded(.up)
        return Int32(min(Double(cap), max(1, untilDeadline)))
    }
}
