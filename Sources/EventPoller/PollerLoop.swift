internal import CEventPoller
import Dispatch
import Glibc
import Synchronization

extension FDPoller {
    /// The epoll instance, its thread and the registrations. The thread holds the loop; the
    /// poller stops it when released and the last of the two to let go closes the fds.
    final class Loop: @unchecked Sendable {
        // @unchecked: `table` and `delivering` are confined to `queue`; the fds are set once.
        let queue: DispatchQueue
        let epollFD: Int32
        /// Written once to end the thread.
        private let wakeFD: Int32
        private let stopping = Atomic<Bool>(false)
        let table = Table()
        var delivering = false

        private static let wakeToken = UInt64.max
        private static let batchSize: Int32 = 32

        init(queue: DispatchQueue) throws(PollerError) {
            self.queue = queue
            epollFD = CEventPoller_create()
            guard epollFD >= 0 else { throw PollerError(errno: errno, "epoll_create1") }
            wakeFD = CEventPoller_eventfd()
            guard wakeFD >= 0 else {
                let error = PollerError(errno: errno, "eventfd")
                close(epollFD)
                throw error
            }
            _ = CEventPoller_ctl(epollFD, Int32(CEventPoller_ADD), wakeFD, Events.readable.rawValue, Self.wakeToken)
        }

        deinit {
            table.closeAll()
            close(wakeFD)
            close(epollFD)
        }

        func startThread(name: String) throws(PollerError) {
            final class Start {
                let loop: Loop
                let name: String
                init(loop: Loop, name: String) { self.loop = loop; self.name = name }
            }
            let context = Unmanaged.passRetained(Start(loop: self, name: name)).toOpaque()
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, { raw in
                let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
                CEventPoller_set_thread_name(start.name)
                start.loop.run()
                return nil
            }, context)
            guard rc == 0 else {
                Unmanaged<Start>.fromOpaque(context).release()
                throw PollerError(errno: rc, "pthread_create")
            }
            pthread_detach(thread)
        }

        /// Called when the poller is released (from any thread, never blocks).
        func stop() {
            stopping.store(true, ordering: .releasing)
            var one: UInt64 = 1
            _ = write(wakeFD, &one, 8)
        }

        private func run() {
            let tokens = UnsafeMutablePointer<UInt64>.allocate(capacity: Int(Self.batchSize))
            let events = UnsafeMutablePointer<UInt32>.allocate(capacity: Int(Self.batchSize))
            defer {
                tokens.deallocate()
                events.deallocate()
            }
            while !stopping.load(ordering: .acquiring) {
                let count = CEventPoller_wait(epollFD, tokens, events, Self.batchSize, -1)
                if count < 0 {
                    if errno == EINTR { continue }
                    fatalError("epoll_wait: \(String(cString: strerror(errno)))")
                }
                if stopping.load(ordering: .acquiring) { break }
                queue.sync { deliver(tokens: tokens, events: events, count: Int(count)) }
            }
        }

        /// On `queue`: the handlers of this batch, then the after-delivery work they asked for.
        private func deliver(tokens: UnsafeMutablePointer<UInt64>, events: UnsafeMutablePointer<UInt32>, count: Int) {
            delivering = true
            for i in 0..<count {
                let token = tokens[i]
                if token == Self.wakeToken { continue }
                table.deliver(token: token, events: Events(rawValue: events[i]))
            }
            table.runAfterDelivery()
            delivering = false
        }
    }

    /// Registrations by slot; a slot's generation changes with each registration, so an
    /// event taken from epoll before an `unregister` never reaches a later registration.
    final class Table {
        struct Entry {
            var fd: Int32
            var events: Events
            var handler: Handler
            var afterDelivery: (() -> Void)?
            var afterDeliveryRequested = false
        }
        private var entries: [Entry?] = []
        private var generations: [UInt32] = []
        private var free: [UInt32] = []
        /// Slots whose after-delivery work is due at the end of the batch.
        private var afterDeliveryDue: [UInt32] = []

        init() {
            afterDeliveryDue.reserveCapacity(64)
        }

        func add(_ entry: Entry) -> Registration {
            let slot: UInt32
            if let reused = free.popLast() {
                slot = reused
                generations[Int(slot)] &+= 1
                entries[Int(slot)] = entry
            } else {
                slot = UInt32(entries.count)
                entries.append(entry)
                generations.append(0)
            }
            return Registration(slot: slot, generation: generations[Int(slot)])
        }

        private func isLive(_ registration: Registration) -> Bool {
            let slot = Int(registration.slot)
            return slot < entries.count && generations[slot] == registration.generation && entries[slot] != nil
        }

        func fd(of registration: Registration) -> Int32? {
            isLive(registration) ? entries[Int(registration.slot)]!.fd : nil
        }

        /// Removes a live registration and returns its fd.
        func remove(_ registration: Registration) -> Int32? {
            guard isLive(registration) else { return nil }
            let fd = entries[Int(registration.slot)]!.fd
            entries[Int(registration.slot)] = nil
            free.append(registration.slot)
            return fd
        }

        @inline(__always)
        func deliver(token: UInt64, events: Events) {
            let registration = Registration(slot: UInt32(truncatingIfNeeded: token), generation: UInt32(token >> 32))
            guard isLive(registration), let entry = entries[Int(registration.slot)] else { return }
            // `entry` is a copy: the handler may unregister or register anything.
            entry.handler(entry.fd, events)
        }

        func requestAfterDelivery(_ registration: Registration) {
            let slot = Int(registration.slot)
            guard isLive(registration), entries[slot]!.afterDelivery != nil,
                  !entries[slot]!.afterDeliveryRequested else { return }
            entries[slot]!.afterDeliveryRequested = true
            afterDeliveryDue.append(registration.slot)
        }

        func runAfterDelivery() {
            // Work may request more (of other registrations): run until none is due.
            while let slot = afterDeliveryDue.popLast() {
                guard entries[Int(slot)] != nil else { continue }
                entries[Int(slot)]!.afterDeliveryRequested = false
                // Called on a copy: the work may change the table.
                let work = entries[Int(slot)]!.afterDelivery
                work?()
            }
        }

        func closeAll() {
            for case let entry? in entries { close(entry.fd) }
            entries = []
        }
    }
}
