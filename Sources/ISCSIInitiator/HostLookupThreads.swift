internal import CEventPoller
import Dispatch
import Glibc
import ServerLog
import Synchronization

/// A few threads of their own that run host name lookups for reconnect attempts
/// (ISCSISession+HostLookup.swift), one lookup per thread at a time, in the order given.
///
/// Not a Dispatch queue: getaddrinfo blocks its thread for as long as the resolver takes (with
/// a dead DNS server, 5 s per try and server, tens of seconds), and cannot be interrupted. On
/// the global pool, which libdispatch on Linux keeps about as wide as the CPU count (a
/// concurrent queue of our own targets it too), a few such lookups would hold every worker
/// thread and delay all other Dispatch work of the process, the request queues' included.
/// Here a dead DNS server holds at most `limit` threads that do nothing else, and lookups
/// beyond that wait in a list. Each session has at most one lookup queued or running (a new
/// attempt waits for the lookup already under way), so the list is never longer than the
/// number of sessions.
///
/// Threads start when lookups need them, up to `limit`, and then stay (asleep on a semaphore
/// while there is nothing to look up), as the logout thread does.
final class HostLookupThreads: @unchecked Sendable {
    // @unchecked: `state` is behind its lock, `workAvailable` and `limit` are set once.

    typealias Job = @Sendable () -> Void

    /// The threads' name (at most 15 bytes), as seen in /proc and by debuggers.
    static let name = "iscsi-lookup"
    static let shared = HostLookupThreads(limit: 4)

    let limit: Int

    private struct State {
        var jobs: [Job] = []
        var threads = 0
        /// Threads running a job (the others wait for one).
        var busy = 0
    }
    private let state = Mutex(State())
    /// Counts the jobs in `state.jobs`: every `run` signals once, every job taken waits once.
    private let workAvailable = DispatchSemaphore(value: 0)

    init(limit: Int) {
        precondition(limit >= 1)
        self.limit = limit
    }

    /// Runs `job` on one of the threads, soon if one is free. From any thread; never blocks.
    func run(_ job: @escaping Job) {
        let startThread = state.withLock { state -> Bool in
            state.jobs.append(job)
            guard state.jobs.count > state.threads - state.busy, state.threads < limit else { return false }
            state.threads += 1
            return true
        }
        workAvailable.signal()
        // Without a thread the job waits for the next `run` to try again; its attempt times
        // out meanwhile ("cannot resolve ... within ...").
        if startThread, !self.startThread() {
            state.withLock { $0.threads -= 1 }
        }
    }

    private func startThread() -> Bool {
        let me = Unmanaged.passRetained(self).toOpaque()   // the thread's, for the life of the process
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let threads = Unmanaged<HostLookupThreads>.fromOpaque(raw!).takeUnretainedValue()
            CEventPoller_set_thread_name(HostLookupThreads.name)
            while true { threads.runOne() }
        }, me)
        guard rc == 0 else {
            Unmanaged<HostLookupThreads>.fromOpaque(me).release()
            Log.error("iscsi: cannot start a host name lookup thread: pthread_create: \(String(cString: strerror(rc)))")
            return false
        }
        pthread_detach(thread)
        return true
    }

    /// Waits for a job and runs it.
    private func runOne() {
        workAvailable.wait()
        let job = state.withLock { state -> Job in
            state.busy += 1
            return state.jobs.removeFirst()
        }
        job()
        state.withLock { $0.busy -= 1 }
    }
}
