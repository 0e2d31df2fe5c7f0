import VhostUserProtocol
import VirtioCore

/// One buffer of a descriptor chain as the driver describes it.
public struct MockBuffer: Sendable, Equatable {
    public var address: UInt64
    public var length: UInt32
    public var writable: Bool

    public init(address: UInt64, length: UInt32, writable: Bool) {
        self.address = address
        self.length = length
        self.writable = writable
    }

    public static func readable(_ address: UInt64, _ length: Int) -> MockBuffer {
        MockBuffer(address: address, length: UInt32(length), writable: false)
    }

    public static func writable(_ address: UInt64, _ length: Int) -> MockBuffer {
        MockBuffer(address: address, length: UInt32(length), writable: true)
    }
}

/// A raw descriptor (virtio v1.2 §2.7.5), for building well-formed and hostile tables.
public struct MockDescriptor: Sendable, Equatable {
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

/// The driver side of a split virtqueue (virtio v1.2 §2.7) in `TestGuestMemory`, in the
/// manner of rust-vmm's virtio-queue `MockSplitQueue`: descriptor table, avail ring (flags,
/// idx, ring[size], used_event) and used ring (flags, idx, ring[size], avail_event), all
/// little-endian. Used from one thread (the test's); the device runs concurrently and the
/// ring indices are published with release stores and read with acquire loads.
public final class MockSplitQueue: @unchecked Sendable {
    public let memory: TestGuestMemory
    public let size: UInt16
    /// Guest physical addresses of the three parts.
    public let descriptorTableAddress: UInt64
    public let availAddress: UInt64
    public let usedAddress: UInt64

    /// The driver's avail index (the next value it will publish entries under).
    public private(set) var availIndex: UInt16
    /// How far the driver has consumed the used ring.
    public private(set) var lastUsedIndex: UInt16
    private var freeDescriptors: [UInt16]
    private var chainDescriptors: [UInt16: [UInt16]] = [:]

    /// Lays out a ring of `size` entries with both indices starting at `startIndex` (so tests
    /// can start near 65535 to cross the 16-bit wrap).
    public init(memory: TestGuestMemory, size: UInt16, startIndex: UInt16 = 0) {
        precondition(size > 0 && size & (size - 1) == 0)
        self.memory = memory
        self.size = size
        descriptorTableAddress = memory.allocate(SplitQueueLayout.descriptorTableBytes(size: size), alignment: 4096)
        availAddress = memory.allocate(SplitQueueLayout.availRingBytes(size: size), alignment: 2)
        usedAddress = memory.allocate(SplitQueueLayout.usedRingBytes(size: size), alignment: 4096)
        availIndex = startIndex
        lastUsedIndex = startIndex
        freeDescriptors = Array((0..<size).reversed())
        memory.store(startIndex, at: availAddress + 2)
        memory.store(startIndex, at: usedAddress + 2)
    }

    // MARK: - Addresses

    /// SET_VRING_ADDR payload for ring `index` (frontend virtual addresses, like QEMU).
    public func vringAddress(index: UInt32) -> VringAddress {
        VringAddress(index: index, flags: 0,
                     descriptorTable: memory.frontendAddress(ofGuest: descriptorTableAddress),
                     usedRing: memory.frontendAddress(ofGuest: usedAddress),
                     availRing: memory.frontendAddress(ofGuest: availAddress), log: 0)
    }

    /// A device-side queue over this ring, translated in this process (for VirtioCore tests).
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
    public func writeDescriptor(_ index: UInt16, _ d: MockDescriptor) {
        precondition(index < size)
        write(d, at: descriptorTableAddress + 16 * UInt64(index))
    }

    public func readDescriptor(_ index: UInt16) -> MockDescriptor {
        let a = descriptorTableAddress + 16 * UInt64(index)
        return MockDescriptor(address: memory.load(at: a), length: memory.load(at: a + 8),
                              flags: DescriptorFlags(rawValue: memory.load(at: a + 12)), next: memory.load(at: a + 14))
    }

    private func write(_ d: MockDescriptor, at address: UInt64) {
        memory.store(d.address, at: address)
        memory.store(d.length, at: address + 8)
        memory.store(d.flags.rawValue, at: address + 12)
        memory.store(d.next, at: address + 14)
    }

    /// Takes a free descriptor index (for hand-built chains; freed only via `popUsed` of a
    /// chain built with `addChain`).
    public func allocateDescriptor() -> UInt16 {
        guard let index = freeDescriptors.popLast() else { preconditionFailure("test bug: descriptor table full") }
        return index
    }

    public var freeDescriptorCount: Int { freeDescriptors.count }

    /// Builds a direct chain (virtio v1.2 §2.7.5) from free descriptors and returns its head.
    /// Not yet available to the device: call `publish`.
    public func addChain(_ buffers: [MockBuffer]) -> UInt16 {
        precondition(!buffers.isEmpty)
        let indices = buffers.map { _ in allocateDescriptor() }
        for (i, buffer) in buffers.enumerated() {
            let last = i == buffers.count - 1
            var flags: DescriptorFlags = buffer.writable ? .write : []
            if !last { flags.insert(.next) }
            writeDescriptor(indices[i], MockDescriptor(address: buffer.address, length: buffer.length, flags: flags,
                                                       next: last ? 0 : indices[i + 1]))
        }
        chainDescriptors[indices[0]] = indices
        return indices[0]
    }

    /// Writes an indirect table (virtio v1.2 §2.7.5.3) of raw descriptors into guest memory and
    /// returns its guest address.
    public func writeIndirectTable(_ descriptors: [MockDescriptor]) -> UInt64 {
        let table = memory.allocate(16 * max(descriptors.count, 1), alignment: 16)
        for (i, d) in descriptors.enumerated() { write(d, at: table + 16 * UInt64(i)) }
        return table
    }

    /// Builds a chain whose buffers live in an indirect table (entries linked 0→1→…) and
    /// returns the head: one descriptor with VIRTQ_DESC_F_INDIRECT.
    public func addIndirectChain(_ buffers: [MockBuffer]) -> UInt16 {
        let entries = buffers.enumerated().map { i, b in
            var flags: DescriptorFlags = b.writable ? .write : []
            if i < buffers.count - 1 { flags.insert(.next) }
            return MockDescriptor(address: b.address, length: b.length, flags: flags,
                                  next: i < buffers.count - 1 ? UInt16(i + 1) : 0)
        }
        let table = writeIndirectTable(entries)
        let head = allocateDescriptor()
        writeDescriptor(head, MockDescriptor(address: table, length: UInt32(16 * entries.count), flags: .indirect))
        chainDescriptors[head] = [head]
        return head
    }

    // MARK: - Avail ring

    /// Places `heads` in the avail ring and publishes them with one release store of
    /// avail->idx (virtio v1.2 §2.7.13).
    public func publish(_ heads: [UInt16]) {
        for head in heads {
            memory.store(head, at: availAddress + 4 + 2 * UInt64(availIndex & (size - 1)))
            availIndex &+= 1
        }
        memory.storeRelease(availIndex, at: availAddress + 2)
    }

    public func publish(_ head: UInt16) { publish([head]) }

    /// Writes avail->idx directly (for hostile-index tests); the driver's shadow follows.
    public func setAvailIndex(_ value: UInt16) {
        availIndex = value
        memory.storeRelease(value, at: availAddress + 2)
    }

    /// avail->flags; bit 0 is VIRTQ_AVAIL_F_NO_INTERRUPT (virtio v1.2 §2.7.7).
    public func setAvailFlags(_ flags: UInt16) { memory.store(flags, at: availAddress) }

    /// used_event, after the avail ring (virtio v1.2 §2.7.10).
    public func setUsedEvent(_ value: UInt16) {
        memory.store(value, at: availAddress + 4 + 2 * UInt64(size))
    }

    // MARK: - Used ring

    /// used->idx as the device published it (acquire).
    public var usedIndex: UInt16 { memory.loadAcquire(at: usedAddress + 2) }

    /// avail_event, after the used ring: the device's "kick me after this index".
    public var availEvent: UInt16 { memory.load(at: usedAddress + 4 + 8 * UInt64(size)) }

    /// used->flags; bit 0 is VIRTQ_USED_F_NO_NOTIFY.
    public var usedFlags: UInt16 { memory.load(at: usedAddress) }

    /// Used element in ring slot `position` (taken modulo the size).
    public func usedElement(at position: UInt16) -> UsedElement {
        let a = usedAddress + 4 + 8 * UInt64(position & (size - 1))
        return UsedElement(id: memory.load(at: a), length: memory.load(at: a + 4))
    }

    /// Takes the next used element if the device published one, and frees its descriptors.
    public func popUsed() -> UsedElement? {
        guard usedIndex != lastUsedIndex else { return nil }
        let element = usedElement(at: lastUsedIndex)
        lastUsedIndex &+= 1
        if element.id < UInt32(size), let indices = chainDescriptors.removeValue(forKey: UInt16(element.id)) {
            freeDescriptors.append(contentsOf: indices)
        }
        return element
    }

    /// Asks for an interrupt on the next used element (EVENT_IDX) and returns whether used
    /// elements are already waiting: the driver's "enable callbacks, then re-check" step.
    public func armUsedEvent() -> Bool {
        setUsedEvent(lastUsedIndex)
        memory.fullFence()
        return usedIndex != lastUsedIndex
    }
}
