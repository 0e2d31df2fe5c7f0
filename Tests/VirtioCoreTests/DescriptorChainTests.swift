import Testing
import VirtioCore
import VirtioTestSupport

/// DescriptorChainWalker against chains built by the driver-side mock: virtio v1.2 §2.7.5
/// (descriptor table), §2.7.5.3 (indirect descriptors), §2.7.4.2 (device-readable before
/// device-writable), and the server's own limits (no loops, total length < 2^32, all buffers
/// inside guest memory).
@Suite struct DescriptorChainTests {
    /// Region A (rings and small buffers) at 0 and region B right after it at 0x100000, so a
    /// buffer can straddle the two; region C far away.
    static func setup(size: UInt16 = 16) throws -> (TestGuestMemory, MockSplitQueue) {
        let m = try TestGuestMemory(regions: [(0, 0x100000), (0x100000, 0x100000), (0x4000_0000, 0x10000)])
        return (m, MockSplitQueue(memory: m, size: size))
    }

    static func walk(_ q: MockSplitQueue, _ m: TestGuestMemory, head: UInt16) throws(ChainError) -> ChainSegmentBuffer {
        let buffer = ChainSegmentBuffer(capacity: 1)
        let device = q.deviceQueue()
        try DescriptorChainWalker.walk(queue: device, head: head, memory: m.guestMemory, into: buffer)
        return buffer
    }

    static func segments(_ b: ChainSegmentBuffer) -> [(gpa: UInt64, length: Int, writable: Bool)] {
        (0..<b.count).map { (b[$0].guestAddress, b[$0].length, b[$0].deviceWritable) }
    }

    /// §2.7.5: a direct chain linked with VIRTQ_DESC_F_NEXT, readable then writable.
    @Test func directChain() throws {
        let (m, q) = try Self.setup()
        let a = m.allocate(51), b = m.allocate(4096), c = m.allocate(108), d = m.allocate(512)
        let head = q.addChain([.readable(a, 51), .readable(b, 4096), .writable(c, 108), .writable(d, 512)])
        let chain = try Self.walk(q, m, head: head)
        let s = Self.segments(chain)
        #expect(s.map(\.gpa) == [a, b, c, d])
        #expect(s.map(\.length) == [51, 4096, 108, 512])
        #expect(s.map(\.writable) == [false, false, true, true])
        #expect(chain.readableCount == 2)
        #expect(chain.readableBytes == 51 + 4096)
        #expect(chain.writableBytes == 108 + 512)
        #expect(chain[0].base == m.pointer(a), "segments point at the guest's buffers (no copy)")
        #expect(chain.capacity >= 4, "the segment buffer grew from capacity 1")
    }

    @Test func singleWritableOnlyAndZeroLengthDescriptors() throws {
        let (m, q) = try Self.setup()
        let a = m.allocate(16)
        let head = q.addChain([.readable(a, 0), .writable(a, 16)])
        let chain = try Self.walk(q, m, head: head)
        #expect(chain.count == 1, "a zero-length descriptor contributes no segment")
        #expect(chain.readableCount == 0)
        #expect(chain.writableBytes == 16)
    }

    /// §2.7.5.3: one descriptor with VIRTQ_DESC_F_INDIRECT pointing at a table whose entries
    /// are linked by `next` indices into the table.
    @Test func indirectTable() throws {
        let (m, q) = try Self.setup()
        let a = m.allocate(51), b = m.allocate(108), c = m.allocate(8192)
        // Entries out of table order: 0 → 2 → 1.
        let table = q.writeIndirectTable([
            MockDescriptor(address: a, length: 51, flags: .next, next: 2),
            MockDescriptor(address: c, length: 8192, flags: .write),
            MockDescriptor(address: b, length: 108, flags: [.write, .next], next: 1),
        ])
        let head = q.allocateDescriptor()
        q.writeDescriptor(head, MockDescriptor(address: table, length: 48, flags: .indirect))
        let chain = try Self.walk(q, m, head: head)
        #expect(Self.segments(chain).map(\.gpa) == [a, b, c])
        #expect(chain.readableBytes == 51 && chain.writableBytes == 8300)

        let helper = q.addIndirectChain([.readable(a, 51), .writable(b, 108)])
        #expect(Self.segments(try Self.walk(q, m, head: helper)).map(\.length) == [51, 108])
    }

    /// A direct chain that is allowed to continue into an indirect descriptor as its last
    /// element is accepted (the Linux driver never does it, but §2.7.5.3.1 only forbids
    /// INDIRECT together with NEXT).
    @Test func directDescriptorsThenIndirect() throws {
        let (m, q) = try Self.setup()
        let a = m.allocate(51), b = m.allocate(108)
        let table = q.writeIndirectTable([MockDescriptor(address: b, length: 108, flags: .write)])
        let first = q.allocateDescriptor(), second = q.allocateDescriptor()
        q.writeDescriptor(first, MockDescriptor(address: a, length: 51, flags: .next, next: second))
        q.writeDescriptor(second, MockDescriptor(address: table, length: 16, flags: .indirect))
        let chain = try Self.walk(q, m, head: first)
        #expect(Self.segments(chain).map(\.gpa) == [a, b])
    }

    /// A loop (0 → 1 → 0) ends in tooManyDescriptors instead of spinning forever.
    @Test func loopIsTooManyDescriptors() throws {
        let (m, q) = try Self.setup(size: 16)
        let a = m.allocate(16)
        q.writeDescriptor(0, MockDescriptor(address: a, length: 16, flags: .next, next: 1))
        q.writeDescriptor(1, MockDescriptor(address: a, length: 16, flags: .next, next: 0))
        #expect(throws: ChainError.tooManyDescriptors(limit: 16)) { try Self.walk(q, m, head: 0) }
        // A self loop too.
        q.writeDescriptor(2, MockDescriptor(address: a, length: 16, flags: .next, next: 2))
        #expect(throws: ChainError.tooManyDescriptors(limit: 16)) { try Self.walk(q, m, head: 2) }
    }

    /// A chain of exactly queue-size descriptors is the longest allowed (§2.7.5.3.1 / §2.7.13.1).
    @Test func chainOfQueueSizeIsAcceptedOneMoreIsNot() throws {
        let (m, q) = try Self.setup(size: 8)
        let a = m.allocate(16)
        for i in 0..<8 {
            q.writeDescriptor(UInt16(i), MockDescriptor(address: a, length: 1, flags: i < 7 ? .next : [], next: UInt16(i + 1)))
        }
        #expect(try Self.walk(q, m, head: 0).count == 8)
        q.writeDescriptor(7, MockDescriptor(address: a, length: 1, flags: .next, next: 0))
        #expect(throws: ChainError.tooManyDescriptors(limit: 8)) { try Self.walk(q, m, head: 0) }
    }

    @Test func nextOutOfRange() throws {
        let (m, q) = try Self.setup(size: 16)
        let a = m.allocate(16)
        q.writeDescriptor(3, MockDescriptor(address: a, length: 16, flags: .next, next: 16))
        #expect(throws: ChainError.nextOutOfRange(16)) { try Self.walk(q, m, head: 3) }
        // Inside an indirect table, `next` indexes the table (§2.7.5.3.1).
        let table = q.writeIndirectTable([MockDescriptor(address: a, length: 16, flags: .next, next: 1)])
        q.writeDescriptor(4, MockDescriptor(address: table, length: 16, flags: .indirect))
        #expect(throws: ChainError.nextOutOfRange(1)) { try Self.walk(q, m, head: 4) }
    }

    /// A loop inside an indirect table is bounded by the table's entry count.
    @Test func loopInsideIndirectTable() throws {
        let (m, q) = try Self.setup()
        let a = m.allocate(16)
        let table = q.writeIndirectTable([
            MockDescriptor(address: a, length: 16, flags: .next, next: 1),
            MockDescriptor(address: a, length: 16, flags: .next, next: 0),
        ])
        q.writeDescriptor(0, MockDescriptor(address: table, length: 32, flags: .indirect))
        #expect(throws: ChainError.tooManyDescriptors(limit: 2)) { try Self.walk(q, m, head: 0) }
    }

    /// §2.7.5.3.1: the device must not follow an INDIRECT descriptor inside an indirect table.
    @Test func nestedIndirect() throws {
        let (m, q) = try Self.setup()
        let a = m.allocate(16)
        let inner = q.writeIndirectTable([MockDescriptor(address: a, length: 16, flags: .write)])
        let outer = q.writeIndirectTable([MockDescriptor(address: inner, length: 16, flags: .indirect)])
        q.writeDescriptor(0, MockDescriptor(address: outer, length: 16, flags: .indirect))
        #expect(throws: ChainError.nestedIndirect) { try Self.walk(q, m, head: 0) }
    }

    /// §2.7.5.3.1: INDIRECT and NEXT must not both be set.
    @Test func indirectWithNext() throws {
        let (m, q) = try Self.setup()
        let a = m.allocate(16)
        let table = q.writeIndirectTable([MockDescriptor(address: a, length: 16, flags: .write)])
        q.writeDescriptor(0, MockDescriptor(address: table, length: 16, flags: [.indirect, .next], next: 1))
        q.writeDescriptor(1, MockDescriptor(address: a, length: 16, flags: .write))
        #expect(throws: ChainError.indirectWithNext) { try Self.walk(q, m, head: 0) }
    }

    /// The indirect table length must be a non-zero multiple of 16 (§2.7.5.3: len is the
    /// table size in bytes of struct virtq_desc entries).
    @Test(arguments: [UInt32(0), 8, 24, 17])
    func badIndirectTableSize(length: UInt32) throws {
        let (m, q) = try Self.setup()
        let table = q.writeIndirectTable([MockDescriptor(address: m.allocate(16), length: 16, flags: .write)])
        q.writeDescriptor(0, MockDescriptor(address: table, length: length, flags: .indirect))
        #expect(throws: ChainError.indirectTableSize(length)) { try Self.walk(q, m, head: 0) }
    }

    /// An indirect table larger than the limit is refused before it is read.
    @Test func indirectTableLargerThanTheLimit() throws {
        let (m, q) = try Self.setup(size: 16)
        let limit = DescriptorChainWalker.descriptorLimit(queueSize: 16)
        #expect(limit == 1024)
        q.writeDescriptor(0, MockDescriptor(address: 0, length: UInt32(16 * (limit + 1)), flags: .indirect))
        #expect(throws: ChainError.tooManyDescriptors(limit: limit)) { try Self.walk(q, m, head: 0) }
    }

    @Test func unmappedIndirectTable() throws {
        let (m, q) = try Self.setup()
        q.writeDescriptor(0, MockDescriptor(address: 0x8000_0000, length: 32, flags: .indirect))
        #expect(throws: ChainError.indirectTableUnmapped(0x8000_0000)) { try Self.walk(q, m, head: 0) }
        // A table that starts mapped but runs off the end of its region (here into the hole
        // after region C) is unmapped as a whole.
        q.writeDescriptor(1, MockDescriptor(address: 0x4000_FFF0, length: 32, flags: .indirect))
        #expect(throws: ChainError.indirectTableUnmapped(0x4000_FFF0)) { try Self.walk(q, m, head: 1) }
    }

    /// §2.7.4.2: device-writable descriptors come after all device-readable ones.
    @Test func readableAfterWritable() throws {
        let (m, q) = try Self.setup()
        let a = m.allocate(64)
        let head = q.addChain([.readable(a, 16), .writable(a + 16, 16), .readable(a + 32, 16)])
        #expect(throws: ChainError.readableAfterWritable) { try Self.walk(q, m, head: head) }
        let indirect = q.addIndirectChain([.writable(a, 16), .readable(a + 16, 16)])
        #expect(throws: ChainError.readableAfterWritable) { try Self.walk(q, m, head: indirect) }
    }

    @Test(arguments: [
        (UInt64(0x200000), UInt32(1)),         // just past the adjacent pair
        (UInt64(0x1FFFF0), UInt32(32)),        // starts mapped, ends in the hole
        (UInt64(0xFFFF_FFFF_FFFF_FFF0), UInt32(0x20)),  // wraps the address space
        (UInt64(0x4000_0000), UInt32(0x10001)), // one byte too long for region C
    ])
    func bufferOutsideMemory(address: UInt64, length: UInt32) throws {
        let (m, q) = try Self.setup()
        let head = q.addChain([.readable(m.allocate(16), 16), MockBuffer(address: address, length: length, writable: true)])
        #expect(throws: ChainError.bufferUnmapped(address: address, length: length)) { try Self.walk(q, m, head: head) }
    }

    /// A buffer may cross from one region into an adjacent one (guest-physically contiguous,
    /// mapped separately): it becomes two segments with their own host pointers.
    @Test func bufferStraddlingAdjacentRegionsIsSplit() throws {
        let (m, q) = try Self.setup()
        let start: UInt64 = 0x100000 - 100
        let head = q.addChain([.readable(m.allocate(16), 16), .writable(start, 300)])
        let chain = try Self.walk(q, m, head: head)
        let s = Self.segments(chain)
        #expect(s.count == 3)
        #expect(s[1].gpa == start && s[1].length == 100 && s[1].writable)
        #expect(s[2].gpa == 0x100000 && s[2].length == 200 && s[2].writable)
        #expect(chain[1].base == m.pointer(start))
        #expect(chain[2].base == m.pointer(0x100000))
        #expect(chain[1].base + 100 != chain[2].base, "the regions are separate mappings")
        #expect(chain.writableBytes == 300)
    }

    /// The total length of a chain must fit in the 32-bit used length (§2.7.8 len is le32).
    @Test func totalLengthAbove4GiB() throws {
        // 64 descriptors of 64 MiB (the same sparse, never-touched buffer) = 2^32 bytes.
        let m = try TestGuestMemory(regions: [(0, 0x100000), (0x1000_0000, 64 << 20)])
        let q = MockSplitQueue(memory: m, size: 128)
        let buffers = (0..<64).map { _ in MockBuffer.writable(0x1000_0000, 64 << 20) }
        let head = q.addChain(buffers)
        #expect(throws: ChainError.tooLong) { try Self.walk(q, m, head: head) }
        // 63 of them plus 64 MiB - 1 bytes is exactly 2^32 - 1: accepted.
        let q2 = MockSplitQueue(memory: m, size: 128)
        let head2 = q2.addChain((0..<63).map { _ in MockBuffer.writable(0x1000_0000, 64 << 20) }
                                + [MockBuffer.writable(0x1000_0000, (64 << 20) - 1)])
        let chain = try Self.walk(q2, m, head: head2)
        #expect(chain.writableBytes == Int(UInt32.max))
    }

    /// Walking again into the same buffer starts from scratch.
    @Test func bufferIsResetBetweenWalks() throws {
        let (m, q) = try Self.setup()
        let a = m.allocate(64)
        let first = q.addChain([.readable(a, 8), .readable(a, 8), .writable(a, 8)])
        let second = q.addChain([.writable(a, 4)])
        let buffer = ChainSegmentBuffer()
        let device = q.deviceQueue()
        try DescriptorChainWalker.walk(queue: device, head: first, memory: m.guestMemory, into: buffer)
        #expect(buffer.count == 3)
        try DescriptorChainWalker.walk(queue: device, head: second, memory: m.guestMemory, into: buffer)
        #expect(buffer.count == 1 && buffer.readableCount == 0 && buffer.readableBytes == 0 && buffer.writableBytes == 4)
    }

    @Test func errorsDescribeThemselves() {
        let all: [ChainError] = [.nextOutOfRange(3), .tooManyDescriptors(limit: 8), .nestedIndirect, .indirectWithNext,
                                 .indirectTableSize(8), .indirectTableUnmapped(0x10), .readableAfterWritable,
                                 .bufferUnmapped(address: 0x10, length: 4), .tooLong]
        #expect(Set(all.map(\.description)).count == all.count)
    }
}
