/// One piece of a request's buffers, translated into this process.
public struct ChainSegment {
    public var base: UnsafeMutableRawPointer
    public var length: Int
    /// Guest physical address of `base`, for the dirty log.
    public var guestAddress: UInt64
    public var deviceWritable: Bool
}

/// Why a descriptor chain was refused. Each is a guest bug or an attack; the request fails,
/// the server goes on.
public enum ChainError: Error, Equatable, CustomStringConvertible {
    case nextOutOfRange(UInt16)
    case tooManyDescriptors(limit: Int)
    case nestedIndirect
    case indirectWithNext
    case indirectTableSize(UInt32)
    case indirectTableUnmapped(UInt64)
    case readableAfterWritable
    case bufferUnmapped(address: UInt64, length: UInt32)
    case tooLong

    public var description: String {
        switch self {
        case .nextOutOfRange(let n): return "descriptor next index \(n) is out of range"
        case .tooManyDescriptors(let limit): return "chain longer than \(limit) descriptors (a loop?)"
        case .nestedIndirect: return "indirect descriptor inside an indirect table"
        case .indirectWithNext: return "indirect descriptor with the NEXT flag"
        case .indirectTableSize(let len): return "indirect table length \(len) is not a non-zero multiple of 16"
        case .indirectTableUnmapped(let a): return "indirect table at 0x\(String(a, radix: 16)) is outside guest memory"
        case .readableAfterWritable: return "device-readable descriptor after a device-writable one"
        case .bufferUnmapped(let a, let l): return "buffer 0x\(String(a, radix: 16))+\(l) is outside guest memory"
        case .tooLong: return "chain's total length exceeds 2^32 bytes"
        }
    }
}

/// Reusable storage for the segments of one chain. Grows on demand, never shrinks, so a
/// request slot that keeps one allocates only while it warms up.
///
/// The counts live in a struct reached through a pointer held in a `let`: Swift checks
/// exclusive access to a class's stored `var`s at run time (swift_beginAccess, a thread-local
/// lookup costing ~75 instructions each), and the walker touches these fields several times
/// per descriptor. Access through the pointer is not checked. That is safe because the buffer
/// is used by one request, on one queue, at a time (below), and no accessor here hands out an
/// `inout` reference that could overlap another.
public final class ChainSegmentBuffer: @unchecked Sendable {
    // @unchecked: owned by one request at a time; it crosses queues only through Dispatch,
    // which orders the accesses.
    @usableFromInline struct State {
        @usableFromInline var segments: UnsafeMutablePointer<ChainSegment>
        @usableFromInline var capacity: Int
        @usableFromInline var count = 0
        @usableFromInline var readableCount = 0
        @usableFromInline var readableBytes = 0
        @usableFromInline var writableBytes = 0
        @usableFromInline init(segments: UnsafeMutablePointer<ChainSegment>, capacity: Int) {
            self.segments = segments
            self.capacity = capacity
        }
    }

    @usableFromInline let state: UnsafeMutablePointer<State>

    @inlinable public var segments: UnsafeMutablePointer<ChainSegment> { state.pointee.segments }
    @inlinable public var capacity: Int { state.pointee.capacity }
    @inlinable public internal(set) var count: Int {
        get { state.pointee.count }
        set { state.pointee.count = newValue }
    }
    /// Number of leading segments that are device-readable (the rest are writable).
    @inlinable public internal(set) var readableCount: Int {
        get { state.pointee.readableCount }
        set { state.pointee.readableCount = newValue }
    }
    @inlinable public internal(set) var readableBytes: Int {
        get { state.pointee.readableBytes }
        set { state.pointee.readableBytes = newValue }
    }
    @inlinable public internal(set) var writableBytes: Int {
        get { state.pointee.writableBytes }
        set { state.pointee.writableBytes = newValue }
    }

    public init(capacity: Int = 8) {
        let capacity = max(capacity, 1)
        state = .allocate(capacity: 1)
        state.initialize(to: State(segments: .allocate(capacity: capacity), capacity: capacity))
    }

    deinit {
        state.pointee.segments.deallocate()
        state.deinitialize(count: 1)
        state.deallocate()
    }

    @inline(__always)
    func append(_ segment: ChainSegment) {
        if state.pointee.count == state.pointee.capacity { grow() }
        (state.pointee.segments + state.pointee.count).initialize(to: segment)
        state.pointee.count += 1
    }

    private func grow() {
        let bigger = UnsafeMutablePointer<ChainSegment>.allocate(capacity: state.pointee.capacity * 2)
        bigger.moveInitialize(from: state.pointee.segments, count: state.pointee.count)
        state.pointee.segments.deallocate()
        state.pointee.segments = bigger
        state.pointee.capacity *= 2
    }

    @inline(__always)
    func reset() {
        state.pointee.count = 0
        state.pointee.readableCount = 0
        state.pointee.readableBytes = 0
        state.pointee.writableBytes = 0
    }

    @inlinable
    public subscript(index: Int) -> ChainSegment {
        state.pointee.segments[index]
    }
}

/// Walks a descriptor chain (virtio v1.2 §2.7.5, §2.7.5.3) and validates it completely before
/// any of it is used: every index in range, no loops (at most `maxDescriptors` descriptors in
/// all), indirect tables well-formed and not nested, device-writable descriptors only after
/// device-readable ones, every buffer inside guest memory, total length below 2^32.
public enum DescriptorChainWalker {
    /// The most descriptors one chain may have, indirect ones included. virtio v1.2 §2.7.5.3.1
    /// lets a driver use at most the queue size; indirect tables may be larger in practice.
    public static func descriptorLimit(queueSize: UInt16) -> Int { max(Int(queueSize), 1024) }

    public static func walk(queue: borrowing UnsafeSplitQueue, head: UInt16, memory: GuestMemory,
                            into buffer: ChainSegmentBuffer) throws(ChainError) {
        buffer.reset()
        let limit = descriptorLimit(queueSize: queue.size)
        var visited = 0
        var total: UInt64 = 0
        var seenWritable = false
        var index = head
        while true {
            visited += 1
            guard visited <= Int(queue.size) else { throw .tooManyDescriptors(limit: Int(queue.size)) }
            let descriptor = queue.descriptor(at: index)
            if descriptor.flags.contains(.indirect) {
                guard !descriptor.flags.contains(.next) else { throw .indirectWithNext }
                try walkIndirect(descriptor, memory: memory, limit: limit, into: buffer,
                                 total: &total, seenWritable: &seenWritable)
                return
            }
            try append(descriptor, memory: memory, into: buffer, total: &total, seenWritable: &seenWritable)
            guard descriptor.flags.contains(.next) else { return }
            guard descriptor.next < queue.size else { throw .nextOutOfRange(descriptor.next) }
            index = descriptor.next
        }
    }

    private static func walkIndirect(_ table: Descriptor, memory: GuestMemory, limit: Int,
                                     into buffer: ChainSegmentBuffer, total: inout UInt64,
                                     seenWritable: inout Bool) throws(ChainError) {
        guard table.length > 0, table.length % UInt32(Descriptor.byteCount) == 0 else {
            throw .indirectTableSize(table.length)
        }
        let count = Int(table.length) / Descriptor.byteCount
        guard count <= limit else { throw .tooManyDescriptors(limit: limit) }
        guard let base = memory.pointer(guest: table.address, length: Int(table.length)) else {
            throw .indirectTableUnmapped(table.address)
        }
        var index = 0
        var visited = 0
        while true {
            visited += 1
            guard visited <= count else { throw .tooManyDescriptors(limit: count) }
            let descriptor = Descriptor(loadingFrom: base + Descriptor.byteCount * index)
            guard !descriptor.flags.contains(.indirect) else { throw .nestedIndirect }
            try append(descriptor, memory: memory, into: buffer, total: &total, seenWritable: &seenWritable)
            guard descriptor.flags.contains(.next) else { return }
            guard Int(descriptor.next) < count else { throw .nextOutOfRange(descriptor.next) }
            index = Int(descriptor.next)
        }
    }

    @inline(__always)
    private static func append(_ descriptor: Descriptor, memory: GuestMemory, into buffer: ChainSegmentBuffer,
                               total: inout UInt64, seenWritable: inout Bool) throws(ChainError) {
        let writable = descriptor.flags.contains(.write)
        if writable {
            seenWritable = true
        } else if seenWritable {
            throw .readableAfterWritable
        }
        total += UInt64(descriptor.length)
        guard total <= UInt64(UInt32.max) else { throw .tooLong }
        guard descriptor.length > 0 else { return }
        let mapped = memory.forEachSegment(guest: descriptor.address, length: Int(descriptor.length)) { base, length, gpa in
            buffer.append(ChainSegment(base: base, length: length, guestAddress: gpa, deviceWritable: writable))
            return true
        }
        guard mapped else { throw .bufferUnmapped(address: descriptor.address, length: descriptor.length) }
        if writable {
            buffer.writableBytes += Int(descriptor.length)
        } else {
            buffer.readableCount = buffer.count
            buffer.readableBytes += Int(descriptor.length)
        }
    }
}
