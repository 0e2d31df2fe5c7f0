import Dispatch
import EventPoller
import Glibc

/// What watches a running ring's kick eventfd: the device's poller thread for the ring's
/// queue when the device attached one (`FDPoller.attach(to:)`: the handler runs inline on
/// the poller thread, no libdispatch wake-ups), else a Dispatch read source.
enum KickWatch {
    case source(DispatchSourceRead)
    case poller(FDPoller, FDPoller.Registration)

    /// Starts watching `kickFD` (through a private duplicate) and calls `kicked` on `queue`
    /// for each kick. Call on `queue`; the first kick may be handled as soon as `queue` is free.
    static func start(kickFD: Int32, queue: DispatchQueue,
                      kicked: @escaping @Sendable () -> Void) throws -> KickWatch {
        dispatchPrecondition(condition: .onQueue(queue))
        let drain: @Sendable (Int32) -> Void = { watched in
            // The duplicate shares the eventfd's counter: reading through it resets it.
            var counter: UInt64 = 0
            _ = read(watched, &counter, 8)
            kicked()
        }
        if let poller = FDPoller.attached(to: queue) {
            let registration = try poller.register(fd: kickFD, events: .readable) { watched, _ in drain(watched) }
            return .poller(poller, registration)
        }
        let source = try makeReadSource(watching: kickFD, queue: queue, handler: drain)
        source.resume()
        return .source(source)
    }

    /// Stops watching. Call on the ring's queue: no kick is handled after this returns.
    func cancel() {
        switch self {
        case .source(let source): source.cancel()
        case .poller(let poller, let registration): poller.unregister(registration)
        }
    }
}
