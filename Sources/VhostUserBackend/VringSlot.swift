import Dispatch
import Glibc
import VhostUserProtocol
import VirtioCore

/// The frontend's configuration of one virtqueue, and the running ring when started.
/// Confined to the connection's control queue.
final class VringSlot {
    let index: Int
    var size: UInt16 = 0
    var address: VringAddress?
    /// Next avail index to use when the ring (re)starts; updated when it stops.
    var base: UInt16 = 0
    var kickFD: Int32 = -1
    var enabled = false
    let notifier = CallNotifier()
    /// Set while the ring runs: the device holds the same object.
    var running: Vring?
    var kickWatch: KickWatch?

    init(index: Int) { self.index = index }

    /// Guest address to log used-ring writes at, when the frontend asked for it.
    var usedRingLogAddress: UInt64? {
        guard let address, address.flags & VringAddress.flagLog != 0 else { return nil }
        return address.log
    }

    /// Forgets everything the frontend configured (RESET_DEVICE, disconnect). Not running.
    func clear() {
        precondition(running == nil)
        size = 0
        address = nil
        base = 0
        closeOwned(kickFD)
        kickFD = -1
        enabled = false
        notifier.replace(fd: -1)
    }

    /// The ring's three parts translated through `memory`, or a reason why they cannot be.
    func translate(with memory: GuestMemory) -> Result<(UnsafeMutableRawPointer, UnsafeMutableRawPointer, UnsafeMutableRawPointer), RingSetupError> {
        guard let address else { return .failure(.notConfigured("no ring addresses")) }
        guard size > 0 else { return .failure(.notConfigured("no ring size")) }
        guard let desc = memory.pointer(frontendVirtual: address.descriptorTable,
                                        length: SplitQueueLayout.descriptorTableBytes(size: size)),
              let avail = memory.pointer(frontendVirtual: address.availRing,
                                         length: SplitQueueLayout.availRingBytes(size: size)),
              let used = memory.pointer(frontendVirtual: address.usedRing,
                                        length: SplitQueueLayout.usedRingBytes(size: size))
        else {
            return .failure(.outsideMemory)
        }
        return .success((desc, avail, used))
    }
}

enum RingSetupError: Error, CustomStringConvertible {
    case notConfigured(String)
    case outsideMemory

    var description: String {
        switch self {
        case .notConfigured(let why): return why
        case .outsideMemory: return "ring addresses lie outside guest memory"
        }
    }
}
