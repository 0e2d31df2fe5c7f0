import CVhostShims

/// Descriptor flags (virtio v1.2 §2.7.5).
public struct DescriptorFlags: OptionSet, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let next = DescriptorFlags(rawValue: 1)
    public static let write = DescriptorFlags(rawValue: 2)
    public static let indirect = DescriptorFlags(rawValue: 4)
}

/// One descriptor, copied out of guest memory once (the guest may change the table at any time).
public struct Descriptor: Sendable, Equatable {
    public var address: UInt64
    public var length: UInt32
    public var flags: DescriptorFlags
    public var next: UInt16

    public static let byteCount = 16

    @inline(__always)
    init(loadingFrom p: UnsafeRawPointer) {
        address = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
        length = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        flags = DescriptorFlags(rawValue: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt16.self)))
        next = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
    }
}

/// Sizes of the three parts of a split virtqueue (virtio v1.2 §2.7, with the event index
/// fields always counted: they are harmless when EVENT_IDX is off).
public enum SplitQueueLayout {
    public static func descriptorTableBytes(size: UInt16) -> Int { 16 * Int(size) }
    public static func availRingBytes(size: UInt16) -> Int { 6 + 2 * Int(size) }
    public static func usedRingBytes(size: UInt16) -> Int { 6 + 8 * Int(size) }

    /// virtio v1.2 §2.7: a split queue's size is a power of 2, at most 32768.
    public static func isValidSize(_ size: UInt32) -> Bool {
        size > 0 && size <= 32768 && size & (size - 1) == 0
    }
}

/// The device side of a split virtqueue over borrowed pointers into guest memory.
///
/// A value type of raw pointers so the hot loop compiles to plain loads and stores (no
/// exclusivity checks or reference counting). It is only valid while the `GuestMemory`
/// snapshot the pointers came from is alive, and is used from one queue at a time.
public struct UnsafeSplitQueue {
    public let size: UInt16
    private(set) var descriptorTable: UnsafeMutableRawPointer
    private(set) var avail: UnsafeMutableRawPointer
    private(set) var used: UnsafeMutableRawPointer
    /// VIRTIO_F_EVENT_IDX negotiated.
    public var eventIndex: Bool
    /// VIRTIO_F_NOTIFY_ON_EMPTY negotiated.
    public var notifyOnEmpty: Bool

    /// The next avail ring entry the device will take (the value GET_VRING_BASE reports).
    public private(set) var nextAvail: UInt16
    /// The device's used index, published to the guest by `publishUsed()`.
    public private(set) var nextUsed: UInt16
    private var lastPublishedUsed: UInt16
    private var lastSignalledUsed: UInt16?

    public init(size: UInt16, descriptorTable: UnsafeMutableRawPointer, avail: UnsafeMutableRawPointer,
                used: UnsafeMutableRawPointer, nextAvail: UInt16, eventIndex: Bool, notifyOnEmpty: Bool) {
        self.size = size
        self.descriptorTable = descriptorTable
        self.avail = avail
        self.used = used
        self.eventIndex = eventIndex
        self.notifyOnEmpty = notifyOnEmpty
        self.nextAvail = nextAvail
        // The used index lives in guest memory; on a (re)start the guest's value is the truth.
        let usedIdx = UInt16(littleEndian: CVhostShims_load_acquire_u16(used + 2))
        self.nextUsed = usedIdx
        self.lastPublishedUsed = usedIdx
        self.lastSignalledUsed = nil
    }

    public enum RingError: Error, Equatable {
        /// The driver's avail index moved more than a ring's worth past ours.
        case availIndexOutOfRange(avail: UInt16, next: UInt16)
        case headOutOfRange(UInt16)
    }

    /// Number of entries the driver has made available and the device has not taken yet.
    @inline(__always)
    public func pendingCount() throws(RingError) -> UInt16 {
        let availIdx = UInt16(littleEndian: CVhostShims_load_acquire_u16(avail + 2))
        let pending = availIdx &- nextAvail
        guard pending <= size else { throw .availIndexOutOfRange(avail: availIdx, next: nextAvail) }
        return pending
    }

    /// Takes the next available head, or nil when the ring is empty (virtio v1.2 §2.7.13.2).
    @inline(__always)
    public mutating func popAvail() throws(RingError) -> UInt16? {
        guard try pendingCount() > 0 else { return nil }
        // The acquire load of avail->idx orders this read of the ring entry after it.
        let slot = Int(nextAvail & (size &- 1))
        let head = UInt16(littleEndian: (avail + 4 + 2 * slot).loadUnaligned(as: UInt16.self))
        nextAvail &+= 1
        guard head < size else { throw .headOutOfRange(head) }
        return head
    }

    /// Copies descriptor `index` (< size) out of the table.
    @inline(__always)
    public func descriptor(at index: UInt16) -> Descriptor {
        Descriptor(loadingFrom: descriptorTable + Descriptor.byteCount * Int(index))
    }

    /// Writes a used element; the guest sees it after `publishUsed()` (virtio v1.2 §2.7.8).
    @inline(__always)
    public mutating func addUsed(head: UInt16, length: UInt32) {
        let element = used + 4 + 8 * Int(nextUsed & (size &- 1))
        element.storeBytes(of: UInt32(head).littleEndian, as: UInt32.self)
        (element + 4).storeBytes(of: length.littleEndian, as: UInt32.self)
        nextUsed &+= 1
    }

    /// Makes added used elements visible: a release store of used->idx.
    @inline(__always)
    public mutating func publishUsed() {
        guard nextUsed != lastPublishedUsed else { return }
        CVhostShims_store_release_u16(used + 2, nextUsed.littleEndian)
        lastPublishedUsed = nextUsed
    }

    /// Whether the guest wants an interrupt for what was published since the last signal
    /// (virtio v1.2 §2.7.10 and §2.7.7.2, including NOTIFY_ON_EMPTY §6.3). Call after
    /// `publishUsed()`; if it returns true the caller must signal.
    @inline(__always)
    public mutating func needsNotification() -> Bool {
        // The used->idx store must be visible before we read the guest's suppression state.
        CVhostShims_fence_seq_cst()
        let new = nextUsed
        let old = lastSignalledUsed
        lastSignalledUsed = new
        if old == new { return false }
        if eventIndex {
            guard let old else { return true }
            let usedEvent = UInt16(littleEndian: (avail + 4 + 2 * Int(size)).loadUnaligned(as: UInt16.self))
            // vring_need_event(): notify if used_event lies in (old, new].
            return (new &- usedEvent &- 1) < (new &- old)
        }
        let availFlags = UInt16(littleEndian: avail.loadUnaligned(as: UInt16.self))
        if availFlags & 1 == 0 { return true }  // VIRTQ_AVAIL_F_NO_INTERRUPT clear
        return notifyOnEmpty && ((try? pendingCount()) ?? 1) == 0
    }

    /// Asks the guest to kick for entries after the ones taken so far and returns whether more
    /// arrived meanwhile (in which case the caller keeps processing instead of sleeping).
    @inline(__always)
    public mutating func enableKicks() -> Bool {
        if eventIndex {
            // avail_event lives after the used ring (virtio v1.2 §2.7.10).
            (used + 4 + 8 * Int(size)).storeBytes(of: nextAvail.littleEndian, as: UInt16.self)
        }
        CVhostShims_fence_seq_cst()
        return ((try? pendingCount()) ?? 0) > 0
    }

    /// Points the queue at the same ring mapped elsewhere (a new memory table), keeping the
    /// device's positions.
    public mutating func relocate(descriptorTable: UnsafeMutableRawPointer, avail: UnsafeMutableRawPointer,
                                  used: UnsafeMutableRawPointer) {
        self.descriptorTable = descriptorTable
        self.avail = avail
        self.used = used
    }

    /// Forgets the last signalled position so the next `needsNotification()` signals.
    public mutating func resetSignalled() { lastSignalledUsed = nil }
}
