internal import CEventPoller
import Dispatch
import Glibc

/// One thread in `epoll_wait` for the fds of one serial `DispatchQueue`, running their
/// handlers on that queue without a libdispatch wake-up.
///
/// A `DispatchSource` costs two thread wake-ups per event: libdispatch's manager thread
/// sees the fd ready, then a worker thread is woken to run the handler on the queue. Here the
/// poller's own thread runs the handlers inside `queue.sync { }`: libdispatch runs a sync
/// block on the calling thread when the queue is idle (when it is busy, the poller thread
/// waits its turn), so the handlers still run "on the queue" (`dispatchPrecondition(.onQueue)`
/// holds, timers and `queue.async` work keep working) and one wake-up per event remains.
///
/// Level-triggered: a handler that leaves data unread is called again. Every method is
/// called on `queue`. The handlers of a registration are dropped by `unregister`; an event
/// already taken from epoll for it is then ignored (registrations carry a generation).
/// The thread starts with the first registration and ends when the poller is released.
public final class FDPoller: @unchecked Sendable {
    // @unchecked: the mutable state (in `table`) is confined to `queue`.

    /// What a registration waits for or was told. The values are epoll's, which are poll's.
    public struct Events: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: 0x001)  // EPOLLIN
        public static let writable = Events(rawValue: 0x004)  // EPOLLOUT
        /// Always reported, never asked for.
        public static let error = Events(rawValue: 0x008)     // EPOLLERR
        public static let hangUp = Events(rawValue: 0x010)    // EPOLLHUP
    }

    /// A registered fd. Stale once unregistered: a new registration of the same slot gets
    /// a new generation.
    public struct Registration: Equatable, Sendable {
        let slot: UInt32
        let generation: UInt32
        var token: UInt64 { UInt64(generation) << 32 | UInt64(slot) }
    }

    /// `events` is what epoll reported; `watchedFD` the poller's duplicate of the fd.
    public typealias Handler = (_ watchedFD: Int32, _ events: Events) -> Void

    public let queue: DispatchQueue
    private let name: String
    private var loop: Loop?

    /// `name` names the thread (at most 15 bytes are kept).
    public init(queue: DispatchQueue, name: String) {
        self.queue = queue
        self.name = name
        queue.setSpecific(key: Self.onQueueKey, value: WeakPoller(self))
    }

    deinit {
        loop?.stop()
    }

    // MARK: - Attaching to a queue

    private static let attachedKey = DispatchSpecificKey<WeakPoller>()
    /// Set on `queue` (weakly) from init, so `unregister` can tell whether it runs there.
    private static let onQueueKey = DispatchSpecificKey<WeakPoller>()
    private final class WeakPoller: @unchecked Sendable {
        weak var poller: FDPoller?
        init(_ poller: FDPoller) { self.poller = poller }
    }

    /// Makes `attached(to: queue)` return this poller, for code that is given only the queue
    /// (the vhost-user backend starting a ring, an iSCSI session factory).
    public func attachToQueue() {
        queue.setSpecific(key: Self.attachedKey, value: WeakPoller(self))
    }

    /// The poller serving `queue`, if one was attached.
    public static func attached(to queue: DispatchQueue) -> FDPoller? {
        queue.getSpecific(key: attachedKey)?.poller
    }

    // MARK: - Registrations (on `queue`)

    /// Watches a private duplicate of `fd` (closed by `unregister`, so the caller may close
    /// `fd` whenever it likes) for `events`; `handler` runs on `queue`.
    /// `afterDelivery`, if given, runs at the end of a batch of events for which
    /// `requestAfterDelivery` was called.
    public func register(fd: Int32, events: Events, handler: @escaping Handler,
                         afterDelivery: (() -> Void)? = nil) throws(PollerError) -> Registration {
        dispatchPrecondition(condition: .onQueue(queue))
        let loop = try startedLoop()
        let watched = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard watched >= 0 else { throw PollerError(errno: errno, "dup") }
        let registration = loop.table.add(Table.Entry(fd: watched, events: events, handler: handler,
                                                      afterDelivery: afterDelivery))
        guard CEventPoller_ctl(loop.epollFD, Int32(CEventPoller_ADD), watched, events.rawValue, registration.token) == 0 else {
            let error = PollerError(errno: errno, "epoll_ctl ADD")
            _ = loop.table.remove(registration)
            close(watched)
            throw error
        }
        return registration
    }

    /// Changes what `registration` waits for (e.g. `.writable` only while output is queued).
    public func modify(_ registration: Registration, events: Events) {
        dispatchPrecondition(condition: .onQueue(queue))
        guard let loop, let fd = loop.table.fd(of: registration) else { return }
        _ = CEventPoller_ctl(loop.epollFD, Int32(CEventPoller_MOD), fd, events.rawValue, registration.token)
    }

    /// Stops watching and closes the duplicate fd. Events already taken from epoll for it
    /// are dropped. Stale registrations are ignored.
    public func unregister(_ registration: Registration) {
        // Normally called on `queue`; a caller elsewhere (an owner released on another thread)
        // is moved onto it rather than trapping: a server must not crash on a teardown path.
        guard DispatchQueue.getSpecific(key: Self.onQueueKey)?.poller === self else {
            queue.sync { unregister(registration) }
            return
        }
        guard let loop, let fd = loop.table.remove(registration) else { return }
        _ = CEventPoller_ctl(loop.epollFD, Int32(CEventPoller_DEL), fd, 0, 0)
        close(fd)
    }

    /// True while a handler of this poller runs (on `queue`).
    public var isDelivering: Bool { loop?.delivering ?? false }

    /// While delivering: run `registration`'s `afterDelivery` once this batch of events has
    /// been handled (instead of a `queue.async`, which would wake a worker thread). Returns
    /// false when not delivering; the caller then does what it would have done without.
    public func requestAfterDelivery(_ registration: Registration) -> Bool {
        guard let loop, loop.delivering else { return false }
        loop.table.requestAfterDelivery(registration)
        return true
    }

    private func startedLoop() throws(PollerError) -> Loop {
        if let loop { return loop }
        let loop = try Loop(queue: queue)
        try loop.startThread(name: name)
        self.loop = loop
        return loop
    }
}

public struct PollerError: Error, CustomStringConvertible {
    public let errno: Int32
    public let call: String
    init(errno: Int32, _ call: String) {
        self.errno = errno
        self.call = call
    }
    public var description: String { "\(call): \(String(cString: strerror(errno)))" }
}
