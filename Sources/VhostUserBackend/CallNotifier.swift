import Glibc
import Synchronization

/// The guest notification eventfd of one ring (SET_VRING_CALL). The frontend may replace it
/// while the ring runs; a signal that arrives while there is none yet (QEMU 7.2 sends the
/// kick fds before the call fds) is remembered and delivered when one is set.
public final class CallNotifier: Sendable {
    private struct State {
        var fd: Int32 = -1
        var pending = false
    }
    private let state = Mutex(State())

    public init() {}

    /// Takes ownership of `fd` (-1 for none) and closes the previous one.
    public func replace(fd: Int32) {
        let (old, deliver) = state.withLock { s -> (Int32, Bool) in
            let old = s.fd
            s.fd = fd
            let deliver = fd >= 0 && s.pending
            if deliver { s.pending = false }
            return (old, deliver)
        }
        closeOwned(old)
        if deliver { signal() }
    }

    /// Forgets a signal that found no fd. Called when the ring stops: a stopped ring must not
    /// interrupt the guest later (vhost-user spec: a suspended device does not notify).
    public func dropPending() {
        state.withLock { $0.pending = false }
    }

    /// Interrupts the guest (writes 1 to the eventfd).
    public func signal() {
        state.withLock { s in
            guard s.fd >= 0 else {
                s.pending = true
                return
            }
            var one: UInt64 = 1
            // EAGAIN means the counter is saturated: the guest will be interrupted anyway.
            _ = withUnsafeBytes(of: &one) { write(s.fd, $0.baseAddress, 8) }
        }
    }

    deinit {
        state.withLock { s in closeOwned(s.fd) }
    }
}
