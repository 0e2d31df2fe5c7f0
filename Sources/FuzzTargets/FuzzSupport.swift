import VirtioCore

/// A cursor over fuzz input: reads run past the end as zeros, so every input is valid.
struct FuzzReader {
    private let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { max(bytes.count - offset, 0) }
    var isAtEnd: Bool { offset >= bytes.count }

    mutating func u8() -> UInt8 {
        defer { offset += 1 }
        return offset < bytes.count ? bytes[offset] : 0
    }

    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }

    /// Up to `count` bytes (fewer at the end of the input).
    mutating func bytes(_ count: Int) -> [UInt8] {
        let start = min(offset, bytes.count)
        let end = min(start + max(count, 0), bytes.count)
        offset = start + max(count, 0)
        return Array(bytes[start..<end])
    }

    /// Everything not read yet.
    mutating func rest() -> [UInt8] {
        let start = min(offset, bytes.count)
        offset = bytes.count
        return Array(bytes[start...])
    }
}

/// Guest RAM for a fuzz input: each region is its own heap allocation of exactly its size,
/// so AddressSanitizer reports any access past a region's end, and the regions are freed
/// only when the last `GuestMemory` snapshot holding this object (as its owner) goes away,
/// so a use after the product released the memory is reported too.
final class FuzzGuestMemory: @unchecked Sendable {
    // @unchecked: the byte contents are shared with the device, like real guest RAM.
    struct Region {
        let guestPhysicalAddress: UInt64
        let size: Int
        let base: UnsafeMutableRawPointer
    }

    /// Region layouts a fuzz input chooses from (guest physical address, size). None ends at
    /// or past 2^64: the memory table decoder refuses such a region.
    static let layouts: [[(UInt64, Int)]] = [
        [(0, 8192)],
        [(0, 8192), (8192, 4096)],                          // adjacent: buffers may straddle
        [(0, 8192), (0x1_0000_0000, 4096)],                 // a hole between them
        [(0x1000, 8192), (0xFFFF_FFFF_FFFF_D000, 4096)],    // one just below the top of the space
    ]

    let regions: [Region]
    private(set) lazy var memory = GuestMemory(
        regions: regions.map {
            GuestMemoryRegion(guestPhysicalAddress: $0.guestPhysicalAddress, size: UInt64($0.size),
                              frontendVirtualAddress: UInt64(UInt(bitPattern: $0.base)),
                              hostAddress: UInt(bitPattern: $0.base))
        }, owner: self)

    /// Fills the regions, in order, with `contents` (the rest stays zero).
    init(layout: [(UInt64, Int)], contents: [UInt8]) {
        var offset = 0
        regions = layout.map { gpa, size in
            let base = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
            base.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            let n = min(size, max(contents.count - offset, 0))
            if n > 0 { contents.withUnsafeBytes { base.copyMemory(from: $0.baseAddress! + offset, byteCount: n) } }
            offset += n
            return Region(guestPhysicalAddress: gpa, size: size, base: base)
        }
    }

    deinit { for r in regions { r.base.deallocate() } }

    /// Whether `length` bytes at `p` lie inside one region.
    func contains(_ p: UnsafeRawPointer, length: Int) -> Bool {
        let a = UInt(bitPattern: p)
        return regions.contains { r in
            let base = UInt(bitPattern: r.base)
            return a >= base && length >= 0 && a - base <= UInt(r.size) && UInt(length) <= UInt(r.size) - (a - base)
        }
    }

    /// The region (and offset in it) of guest physical `address`, if mapped.
    func region(containing address: UInt64) -> (Region, Int)? {
        for r in regions where address >= r.guestPhysicalAddress && address - r.guestPhysicalAddress < UInt64(r.size) {
            return (r, Int(address - r.guestPhysicalAddress))
        }
        return nil
    }
}

/// Where a split ring's three parts sit in region 0 (virtio v1.2 §2.7 alignment), starting
/// at `offset`: the descriptor table, then the avail ring, then the used ring.
struct RingPlacement {
    let size: UInt16
    let descriptorOffset: Int
    let availOffset: Int
    let usedOffset: Int
    let end: Int

    init(size: UInt16, offset: Int) {
        self.size = size
        descriptorOffset = (offset + 15) & ~15
        availOffset = descriptorOffset + SplitQueueLayout.descriptorTableBytes(size: size)
        usedOffset = (availOffset + SplitQueueLayout.availRingBytes(size: size) + 3) & ~3
        end = usedOffset + SplitQueueLayout.usedRingBytes(size: size)
    }

    /// A device-side queue over this placement in `memory`'s first region.
    func queue(in memory: FuzzGuestMemory, nextAvail: UInt16, eventIndex: Bool, notifyOnEmpty: Bool) -> UnsafeSplitQueue {
        let base = memory.regions[0].base
        precondition(end <= memory.regions[0].size, "fuzz harness bug: ring does not fit region 0")
        return UnsafeSplitQueue(size: size, descriptorTable: base + descriptorOffset, avail: base + availOffset,
                                used: base + usedOffset, nextAvail: nextAvail, eventIndex: eventIndex,
                                notifyOnEmpty: notifyOnEmpty)
    }
}

/// Checks every segment of a chain the walker accepted: inside guest memory, consistent
/// with its guest address, readable ones first, and byte counts that add up.
func checkChainInvariants(_ chain: ChainSegmentBuffer, memory: FuzzGuestMemory) {
    var readable = 0
    var writable = 0
    precondition(chain.readableCount >= 0 && chain.readableCount <= chain.count)
    for i in 0..<chain.count {
        let s = chain[i]
        precondition(s.length > 0, "empty segment \(i)")
        precondition(memory.contains(s.base, length: s.length), "segment \(i) lies outside guest memory")
        guard let (region, offset) = memory.region(containing: s.guestAddress) else {
            preconditionFailure("segment \(i) has an unmapped guest address 0x\(String(s.guestAddress, radix: 16))")
        }
        precondition(region.base + offset == s.base, "segment \(i): host pointer does not match its guest address")
        precondition(offset + s.length <= region.size, "segment \(i) crosses its region's end")
        if i < chain.readableCount {
            precondition(!s.deviceWritable, "writable segment \(i) among the readable ones")
            readable += s.length
        } else {
            precondition(s.deviceWritable, "readable segment \(i) after a writable one")
            writable += s.length
        }
    }
    precondition(readable == chain.readableBytes && writable == chain.writableBytes, "byte counts do not add up")
    precondition(UInt64(readable) + UInt64(writable) <= UInt64(UInt32.max), "chain longer than 2^32 bytes")
}
