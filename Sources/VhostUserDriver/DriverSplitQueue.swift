internal import CVhostShims
import VhostUserProtocol
import VirtioCore

/// One buffer of a descriptor chain as the driver describes it.
public struct DriverBuffer: Sendable, Equatable {
    public var address: UInt64
    public var length: UInt32
    public var writable: Bool

    public init(address: UInt64, length: UInt32, writable: Bool) {
        self.address = address
        self.length = length
        self.writable = writable
    }

    public static func readable(_ address: UInt64, _ length: Int) -> DriverBuffer {
        DriverBuffer(address: address, length: UInt32(length), writable: false)
    }

    public static func writable(_ address: UInt64, _ length: Int) -> DriverBuffer {
        DriverBuffer(address: address, length: UInt32(length), writable: true)
    }
}

/// A raw descriptor (virtio v1.2 §2.7.5), for building well-formed and hostile tables.
public struct RawDescriptor: Sendable, Equatable {
    public var address: UInt64
    public var length: UInt32
    public var flags: DescriptorFlags
    public var next: UInt16

    public init(address: UInt64, length: UInt32, flags: DescriptorFlags = [], next: UInt16 = 0) {
        self.address = address
        self.length = length
        self.flags = flags
        self.next = next
    }
}

/// A used ring element (virtio v1.2 §2.7.8).
public struct UsedElement: Sendable, Equatable {
    public var id: UInt32
    public var length: UInt32
    public init(id: UInt32, length: UInt32) { self.id = id; self.length = length }
}

/// The driver side of a split virtqueue over raw pointers into (shared) guest memory: the
/// hot-path counterpart of VirtioCore's `UnsafeSplitQueue`. A value type so a polling loop
/// compiles to plain loads and stores; valid while the memory it points into is mapped, used
/// from one thread at a time (the device runs concurrently: indices are published with
/// release stores and read with acquire loads, virtio v1.2 §2.7.13).
public struct UnsafeDriverRing {
    public let size: UInt16
    @usableFromInline let descriptorTable: UnsafeMutableRawPointer
    @usableFromInline let avail: UnsafeMutableRawPointer
    @usableFromInline let used: UnsafeMutableRawPointer
    /// VIRTIO_F_EVENT_IDX negotiated: used_event/avail_event instead of the flags.
    public var eventIndex: Bool
    /// The driver's avail index (the next value it will publish entries under).
    public private(set) var availIndex: UInt16
    /// How far the driver has consumed the used ring.
    public private(set) var lastUsedIndex: UInt16
    /// avail->idx at the last kick decision (for vring_need_event).
    @usableFromInline var lastKickCheck: UInt16

    public init(size: UInt16, descriptorTable: UnsafeMutableRawPointer, avail: UnsafeMutableRawPointer,
                used: UnsafeMutableRawPointer, startIndex: UInt16, eventIndex: Bool) {
        precondition(size > 0 && size & (size - 1) == 0)
        self.size = size
        self.descriptorTable = descriptorTable
        self.avail = avail
        self.used = used
        self.eventIndex = eventIndex
        availIndex = startIndex
        lastUsedIndex = startIndex
        lastKickCheck = startIndex
    }

    // MARK: Descriptors

    @inline(__always)
    public func writeDescriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: DescriptorFlags, next: UInt16) {
        let d = descriptorTable + 16 * Int(index & (size &- 1))
        d.storeBytes(of: address.littleEndian, as: UInt64.self)
        (d + 8).storeBytes(of: length.littleEndian, as: UInt32.self)
        (d + 12).storeBytes(of: flags.rawValue.littleEndian, as: UInt16.self)
        (d + 14).storeBytes(of: next.littleEndian, as: UInt16.self)
    }

    @inline(__always)
    public func readDescriptor(_ index: UInt16) -> RawDescriptor {
        let d = descriptorTable + 16 * Int(index & (size &- 1))
        return RawDescriptor(address: UInt64(littleEndian: d.loadUnaligned(as: UInt64.self)),
                             length: UInt32(littleEndian: (d + 8).loadUnaligned(as: UInt32.self)),
                             flags: DescriptorFlags(rawValue: UInt16(littleEndian: (d + 12).loadUnaligned(as: UInt16.self))),
                             next: UInt16(littleEndian: (d + 14).loadUnaligned(as: UInt16.self)))
    }

    // MARK: Avail ring

    /// Places `head` in the next avail slot; the device sees it after `publishAvail()`.
    @inline(__always)
    public mutating func placeAvail(_ head: UInt16) {
        (avail + 4 + 2 * Int(availIndex & (size &- 1))).storeBytes(of: head.littleEndian, as: UInt16.self)
        availIndex &+= 1
    }

    /// Publishes placed heads with one release store of avail->idx (virtio v1.2 §2.7.13).
    @inline(__always)
    public func publishAvail() {
        CVhostShims_store_release_u16(avail + 2, availIndex.littleEndian)
    }

    /// Writes avail->idx directly (hostile-index tests); the driver's shadow follows.
    public mutating func setAvailIndex(_ value: UInt16) {
        availIndex = value
        CVhostShims_store_release_u16(avail + 2, value.littleEndian)
    }

    /// Whether the device wants a kick for what was published since the last check
    /// (virtio v1.2 §2.7.10 avail_event with EVENT_IDX, else VIRTQ_USED_F_NO_NOTIFY).
    @inline(__always)
    public mutating func needsKick() -> Bool {
        // avail->idx must be visible before we read the device's suppression state.
        CVhostShims_fence_seq_cst()
        let old = lastKickCheck
        let new = availIndex
        lastKickCheck = new
        if eventIndex {
            let event = UInt16(littleEndian: (used + 4 + 8 * Int(size)).loadUnaligned(as: UInt16.self))
            return (new &- event &- 1) < (new &- old)
        }
        return UInt16(littleEndian: used.loadUnaligned(as: UInt16.self)) & 1 == 0
    }

    /// avail->flags; bit 0 is VIRTQ_AVAIL_F_NO_INTERRUPT (virtio v1.2 §2.7.7).
    @inline(__always)
    public func setAvailFlags(_ flags: UInt16) { avail.storeBytes(of: flags.littleEndian, as: UInt16.self) }

    /// used_event, after the avail ring (virtio v1.2 §2.7.10).
    @inline(__always)
    public func setUsedEvent(_ value: UInt16) {
        (avail + 4 + 2 * Int(size)).storeBytes(of: value.littleEndian, as: UInt16.self)
    }

    // MARK: Used ring

    /// used->idx as the device published it (acquire).
    @inline(__always)
    public var usedIndex: UInt16 { UInt16(littleEndian: CVhostShims_load_acquire_u16(used + 2)) }

    /// avail_event, after the used ring: the device's "kick me after this index".
    public var availEvent: UInt16 { UInt16(littleEndian: (used + 4 + 8 * Int(size)).loadUnaligned(as: UInt16.self)) }

    /// used->flags; bit 0 is VIRTQ_USED_F_NO_NOTIFY.
    public var usedFlags: UInt16 { UInt16(littleEndian: used.loadUnaligned(as: UInt16.self)) }

    /// Used element in ring slot `position` (taken modulo the size).
    @inline(__always)
    public func usedElement(at position: UInt16) -> UsedElement {
        let e = used + 4 + 8 * Int(position & (size &- 1))
        return UsedElement(id: UInt32(littleEndian: e.loadUnaligned(as: UInt32.self)),
                           length: UInt32(littleEndian: (e + 4).loadUnaligned(as: UInt32.self)))
    }

    /// Takes the next used element if the device published one.
    @inline(__always)
    public mutating func popUsed() -> UsedElement? {
        guard usedIndex != lastUsedIndex else { return nil }
        let element = usedElement(at: lastUsedIndex)
        lastUsedIndex &+= 1
        return element
    }

    /// Asks for an interrupt on the next used element and returns whether used elements are
    /// already waiting: the driver's "enable callbacks, then re-check" step. With EVENT_IDX
    /// this sets used_event; without it, it clears VIRTQ_AVAIL_F_NO_INTERRUPT.
    @inline(__always)
    public func armInterrupt() -> Bool {
        if eventIndex { setUsedEvent(lastUsedIndex) } else { setAvailFlags(0) }
        CVhostShims_fence_seq_cst()
        return usedIndex != lastUsedIndex
    }
}

/// The driver side of a split virtqueue (virtio v1.2 §2.7) in `SharedGuestMemory`, in the
/// manner of rust-vmm's virtio-queue `MockSplitQueue`: descriptor table, avail ring (flags,
/// idx, ring[size], used_event) and used ring (flags, idx, ring[size], avail_event), all
/// little-endian. Keeps a free list of descriptors and the chains built with `addChain`
/// (freed when their used element is popped), all preallocated.
///
/// Used from one thread; the device runs concurrently. For a hot loop take `ring` (a value
/// of raw pointers) into a local and write it back, or drive `ring` directly.
public final class DriverSplitQueue: @unchecked Sendable {
    public let memory: SharedGuestMemory
    public let size: UInt16
    /// Guest physical addresses of the three parts.
    public let descriptorTableAddress: UInt64
    public let availAddress: UInt64
    public let usedAddress: UInt64
    /// The ring itself; its indices are the driver's.
    public var ring: UnsafeDriverRing

    /// Free descriptor indices (a stack) and, per descriptor, the next one of its chain as
    /// the driver built it (the device never writes descriptors, but a shadow keeps the free
    /// list independent of guest memory). `chainLength[head]` is 0 for untracked heads.
    private let freeStack: UnsafeMutablePointer<UInt16>
    private var freeCount: Int
    private let shadowNext: UnsafeMutablePointer<UInt16>
    private let chainLength: UnsafeMutablePointer<UInt16>

    /// Lays out a ring of `size` entries with both indices starting at `startIndex` (so tests
    /// can start near 65535 to cross the 16-bit wrap).
    public init(memory: SharedGuestMemory, size: UInt16, startIndex: UInt16 = 0, eventIndex: Bool = true) {
        precondition(size > 0 && size & (size - 1) == 0)
        self.memory = memory
        self.size = size
        descriptorTableAddress = memory.allocate(SplitQueueLayout.descriptorTableBytes(size: size), alignment: 4096)
        availAddress = memory.allocate(SplitQueueLayout.availRingBytes(size: size), alignment: 2)
        usedAddress = memory.allocate(SplitQueueLayout.usedRingBytes(size: size), alignment: 4096)
        memory.store(startIndex, at: availAddress + 2)
        memory.store(startIndex, at: usedAddress + 2)
        ring = UnsafeDriverRing(
            size: size,
            descriptorTable: memory.pointer(descriptorTableAddress, length: SplitQueueLayout.descriptorTableBytes(size: size)),
            avail: memory.pointer(availAddress, length: SplitQueueLayout.availRingBytes(size: size)),
            used: memory.pointer(usedAddress, length: SplitQueueLayout.usedRingBytes(size: size)),
            startIndex: startIndex, eventIndex: eventIndex)
        freeStack = .allocate(capacity: Int(size))
        for i in 0..<Int(size) { freeStack[i] = UInt16(Int(size) - 1 - i) }
        freeCount = Int(size)
        shadowNext = .allocate(capacity: Int(size))
        shadowNext.initialize(repeating: 0, count: Int(size))
        chainLength = .allocate(capacity: Int(size))
        chainLength.initialize(repeating: 0, count: Int(size))
    }

    deinit {
        freeStack.deallocate()
        shadowNext.deallocate()
        chainLength.deallocate()
    }

    /// The driver's avail index (the next value it will publish entries under).
    public var availIndex: UInt16 { ring.availIndex }
    /// How far the driver has consumed the used ring.
    public var lastUsedIndex: UInt16 { ring.lastUsedIndex }

    // MARK: - Addresses

    /// SET_VRING_ADDR payload for ring `index` (frontend virtual addresses, like QEMU).
    public func vringAddress(index: UInt32) -> VringAddress {
        VringAddress(index: index, flags: 0,
                     descriptorTable: memory.frontendAddress(ofGuest: descriptorTableAddress),
                     usedRing: memory.frontendAddress(ofGuest: usedAddress),
                     availRing: memory.frontendAddress(ofGuest: availAddress), log: 0)
    }

    /// A device-side queue over this ring, translated in this process (for VirtioCore tests
    /// and in-process micro-benchmarks).
    public func deviceQueue(nextAvail: UInt16? = nil, eventIndex: Bool = false,
                            notifyOnEmpty: Bool = false) -> UnsafeSplitQueue {
        UnsafeSplitQueue(size: size,
                         descriptorTable: memory.pointer(descriptorTableAddress,
                                                         length: SplitQueueLayout.descriptorTableBytes(size: size)),
                         avail: memory.pointer(availAddress, length: SplitQueueLayout.availRingBytes(size: size)),
                         used: memory.pointer(usedAddress, length: SplitQueueLayout.usedRingBytes(size: size)),
                         nextAvail: nextAvail ?? availIndex, eventIndex: eventIndex, notifyOnEmpty: notifyOnEmpty)
    }

    // MARK: - Descriptors

    /// Writes descriptor `index` of the table.
    public func writeDescriptor(_ index: UInt16, _ d: RawDescriptor) {
        precondition(index < size)
        ring.writeDescriptor(index, address: d.address, length: d.length, flags: d.flags, next: d.next)
    }

    public func readDescriptor(_ index: UInt16) -> RawDescriptor {
        precondition(index < size)
        return ring.readDescriptor(index)
    }

    private func write(_ d: RawDescriptor, at address: UInt64) {
        memory.store(d.address, at: address)
        memory.store(d.length, at: address + 8)
        memory.store(d.flags.rawValue, at: address + 12)
        memory.store(d.next, at: address + 14)
    }

    /// Takes a free descriptor index (for hand-built chains; freed only via `popUsed` of a
    /// chain built with `addChain`).
    public func allocateDescriptor() -> UInt16 {
        guard freeCount > 0 else { preconditionFailure("driver bug: descriptor table full") }
        freeCount -= 1
        return freeStack[freeCount]
    }

    public var freeDescriptorCount: Int { freeCount }

    /// Builds a direct chain (virtio v1.2 §2.7.5) from free descriptors and returns its head.
    /// Not yet available to the device: call `publish`.
    public func addChain(_ buffers: [DriverBuffer]) -> UInt16 {
        precondition(!buffers.isEmpty && buffers.count <= freeCount, "driver bug: descriptor table full")
        let head = allocateDescriptor()
        var index = head
        for (i, buffer) in buffers.enumerated() {
            let last = i == buffers.count - 1
            let next = last ? 0 : allocateDescriptor()
            var flags: DescriptorFlags = buffer.writable ? .write : []
            if !last { flags.insert(.next) }
            ring.writeDescriptor(index, address: buffer.address, length: buffer.length, flags: flags, next: next)
            shadowNext[Int(index)] = next
            index = next
        }
        chainLength[Int(head)] = UInt16(buffers.count)
        return head
    }

    /// Writes an indirect table (virtio v1.2 §2.7.5.3) of raw descriptors into guest memory and
    /// returns its guest address.
    public func writeIndirectTable(_ descriptors: [RawDescriptor]) -> UInt64 {
        let table = memory.allocate(16 * max(descriptors.count, 1), alignment: 16)
        for (i, d) in descriptors.enumerated() { write(d, at: table + 16 * UInt64(i)) }
        return table
    }

    /// Builds a chain whose buffers live in an indirect table (entries linked 0→1→…) and
    /// returns the head: one descriptor with VIRTQ_DESC_F_INDIRECT.
    public func addIndirectChain(_ buffers: [DriverBuffer]) -> UInt16 {
        let entries = buffers.enumerated().map { i, b in
            var flags: DescriptorFlags = b.writable ? .write : []
            if i < buffers.count - 1 { flags.insert(.next) }
            return RawDescriptor(address: b.address, length: b.length, flags: flags,
                                 next: i < buffers.count - 1 ? UInt16(i + 1) : 0)
        }
        let table = writeIndirectTable(entries)
        let head = allocateDescriptor()
        writeDescriptor(head, RawDescriptor(address: table, length: UInt32(16 * entries.count), flags: .indirect))
        chainLength[Int(head)] = 1
        return head
    }

    // MARK: - Avail ring

    /// Places `heads` in the avail ring and publishes them with one release store of
    /// avail->idx (virtio v1.2 §2.7.13).
    public func publish(_ heads: [UInt16]) {
        for head in heads { ring.placeAvail(head) }
        ring.publishAvail()
    }

    public func publish(_ head: UInt16) {
        ring.placeAvail(head)
        ring.publishAvail()
    }

    /// Writes avail->idx directly (for hostile-index tests); the driver's shadow follows.
    public func setAvailIndex(_ value: UInt16) { ring.setAvailIndex(value) }

    /// avail->flags; bit 0 is VIRTQ_AVAIL_F_NO_INTERRUPT (virtio v1.2 §2.7.7).
    public func setAvailFlags(_ flags: UInt16) { ring.setAvailFlags(flags) }

    /// used_event, after the avail ring (virtio v1.2 §2.7.10).
    public func setUsedEvent(_ value: UInt16) { ring.setUsedEvent(value) }

    /// Whether the device asked to be kicked for what was published since the last check.
    public func needsKick() -> Bool { ring.needsKick() }

    // MARK: - Used ring

    /// used->idx as the device published it (acquire).
    public var usedIndex: UInt16 { ring.usedIndex }

    /// avail_event, after the used ring: the device's "kick me after this index".
    public var availEvent: UInt16 { ring.availEvent }

    /// used->flags; bit 0 is VIRTQ_USED_F_NO_NOTIFY.
    public var usedFlags: UInt16 { ring.usedFlags }

    /// Used element in ring slot `position` (taken modulo the size).
    public func usedElement(at position: UInt16) -> UsedElement { ring.usedElement(at: position) }

    /// Takes the next used element if the device published one, and frees the descriptors of
    /// a chain built by `addChain`/`addIndirectChain`.
    public func popUsed() -> UsedElement? {
        guard let element = ring.popUsed() else { return nil }
        if element.id < UInt32(size) {
            let head = Int(element.id)
            var count = Int(chainLength[head])
            chainLength[head] = 0
            var index = UInt16(head)
            while count > 0 {
                freeStack[freeCount] = index
                freeCount += 1
                index = shadowNext[Int(index)]
                count -= 1
            }
        }
        return element
    }

    /// Asks for an interrupt on the next used element (used_event, EVENT_IDX) and returns
    /// whether used elements are already waiting: the driver's "enable callbacks, then re-check".
    public func armUsedEvent() -> Bool {
        ring.setUsedEvent(ring.lastUsedIndex)
        CVhostShims_fence_seq_cst()
        return ring.usedIndex != ring.lastUsedIndex
    }
}
