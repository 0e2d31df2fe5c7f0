#if DEBUG
#endif
import VirtioCore

/// Fuzzes the split ring and the descriptor chain walker (virtio v1.2 §2.7.5, §2.7.13).
///
/// Input: byte 0 picks the ring size (bits 0-2: 1 << n), the guest memory layout (bits 3-4,
/// `FuzzGuestMemory.layouts`) and whether the chain accessors run too (bit 5); bytes 1-2 are
/// the device's next avail index; the rest is guest memory, region after region. The ring
/// sits at the start of region 0: descriptor table, avail ring, used ring.
///
/// Every head the ring hands out is walked; an accepted chain must lie in guest memory (see
/// `checkChainInvariants`) and agree with an independent model of the walking rules.
public func fuzzDescriptorChain(_ data: [UInt8]) {
    var input = FuzzReader(data)
    let config = input.u8()
    let size = UInt16(1) << UInt16(config & 7)
    let layout = FuzzGuestMemory.layouts[Int(config >> 3) & 3]
    let useAccessors = config & 0x20 != 0
    let nextAvail = input.u16()
    let memory = FuzzGuestMemory(layout: layout, contents: input.rest())
    let placement = RingPlacement(size: size, offset: 0)
    var queue = placement.queue(in: memory, nextAvail: nextAvail, eventIndex: config & 0x40 != 0,
                                notifyOnEmpty: config & 0x80 != 0)
    let chain = ChainSegmentBuffer(capacity: 1)
    for _ in 0...Int(size) {
        let head: UInt16?
        do { head = try queue.popAvail() } catch { break }
        guard let head else { break }
        precondition(head < size, "popAvail returned head \(head) of a ring of \(size)")
        let expected = ChainModel(memory: memory, placement: placement).walk(head: head)
        var usedLength: UInt32 = 0
        do {
            try DescriptorChainWalker.walk(queue: queue, head: head, memory: memory.memory, into: chain)
            checkChainInvariants(chain, memory: memory)
            guard let expected else {
                preconditionFailure("the walker accepted chain \(head), which the model refuses")
            }
            precondition(expected.readable == UInt64(chain.readableBytes) && expected.writable == UInt64(chain.writableBytes),
                         "walker and model disagree on chain \(head): \(chain.readableBytes)/\(chain.writableBytes) "
                         + "vs \(expected.readable)/\(expected.writable)")
            if useAccessors { usedLength = exerciseAccessors(chain, memory: memory) }
        } catch {
            precondition(expected == nil, "the walker refused chain \(head) (\(error)), which the model accepts")
        }
        queue.addUsed(head: head, length: usedLength)
        queue.publishUsed()
        _ = queue.needsNotification()
    }
    _ = queue.enableKicks()
}

/// Runs the byte-level accessors the request path uses over an accepted chain.
private func exerciseAccessors(_ chain: ChainSegmentBuffer, memory: FuzzGuestMemory) -> UInt32 {
#if DEBUG
    let prefix = min(chain.readableBytes, 64)
    var header = [UInt8](repeating: 0, count: 64)
    let copied = header.withUnsafeMutableBytes { chain.copyReadablePrefix(prefix, to: $0.baseAddress!) }
    precondition(copied, "copyReadablePrefix refused \(prefix) of \(chain.readableBytes) readable bytes")
    if chain.readableBytes < header.count {
        let more = header.withUnsafeMutableBytes { chain.copyReadablePrefix(chain.readableBytes + 1, to: $0.baseAddress!) }
        precondition(!more, "copyReadablePrefix copied more bytes than the chain has")
    }
    let iovecs = IOVecBuffer(capacity: 1)
    for (writable, skip) in [(false, 0), (false, 19), (true, 0), (true, 108)] {
        iovecs.reset()
        chain.collect(writable: writable, skipping: skip, into: iovecs)
        var total = 0
        for v in iovecs.buffer {
            precondition(v.iov_len > 0, "empty iovec")
            precondition(memory.contains(v.iov_base!, length: v.iov_len), "iovec outside guest memory")
            total += v.iov_len
        }
        let available = writable ? chain.writableBytes : chain.readableBytes
        precondition(total == max(available - skip, 0), "collect gathered \(total) of \(available) - \(skip) bytes")
    }
    let source = [UInt8](repeating: 0xA5, count: 200)
    let written = source.withUnsafeBytes { chain.writeWritable(at: 3, from: $0) }
    precondition(written == min(200, max(chain.writableBytes - 3, 0)), "writeWritable wrote \(written) bytes")
    return UInt32(written)
#else
    return 0
#endif
}

/// An independent statement of the walking rules (virtio v1.2 §2.7.5.3 and the product's
/// documented limits), over the fuzz memory directly. Returns the byte counts of an
/// acceptable chain, nil for one that must be refused.
struct ChainModel {
    let memory: FuzzGuestMemory
    let placement: RingPlacement

    struct Totals: Equatable { var readable: UInt64 = 0; var writable: UInt64 = 0 }
    struct Desc { var address: UInt64; var length: UInt32; var flags: UInt16; var next: UInt16 }

    static func load(_ p: UnsafeRawPointer) -> Desc {
        Desc(address: UInt64(littleEndian: p.loadUnaligned(as: UInt64.self)),
             length: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
             flags: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt16.self)),
             next: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 14, as: UInt16.self)))
    }

    /// Whether every byte of [address, address + length) is in some region.
    func mapped(_ address: UInt64, _ length: UInt64) -> Bool {
        var a = address
        var left = length
        while left > 0 {
            guard let (region, offset) = memory.region(containing: a) else { return false }
            let n = min(left, UInt64(region.size - offset))
            left -= n
            if left > 0 {
                let (next, overflow) = a.addingReportingOverflow(n)
                if overflow { return false }
                a = next
            }
        }
        return true
    }

    func walk(head: UInt16) -> Totals? {
        let size = Int(placement.size)
        let table = memory.regions[0].base + placement.descriptorOffset
        var totals = Totals()
        var seenWritable = false
        func take(_ d: Desc) -> Bool {
            let writable = d.flags & 2 != 0
            if !writable && seenWritable { return false }
            if writable { seenWritable = true }
            if totals.readable + totals.writable + UInt64(d.length) > UInt64(UInt32.max) { return false }
            if d.length > 0 && !mapped(d.address, UInt64(d.length)) { return false }
            if writable { totals.writable += UInt64(d.length) } else { totals.readable += UInt64(d.length) }
            return true
        }
        var index = Int(head)
        for _ in 0..<size {
            let d = Self.load(table + 16 * index)
            if d.flags & 4 != 0 {
                if d.flags & 1 != 0 { return nil }
                if d.length == 0 || d.length % 16 != 0 { return nil }
                let count = Int(d.length / 16)
                if count > max(size, 1024) { return nil }
                guard let (region, offset) = memory.region(containing: d.address),
                      offset + Int(d.length) <= region.size else { return nil }
                let entries = region.base + offset
                var i = 0
                for _ in 0..<count {
                    let e = Self.load(entries + 16 * i)
                    if e.flags & 4 != 0 { return nil }
                    if !take(e) { return nil }
                    if e.flags & 1 == 0 { return totals }
                    if Int(e.next) >= count { return nil }
                    i = Int(e.next)
                }
                return nil  // more entries than the table has: a loop
            }
            if !take(d) { return nil }
            if d.flags & 1 == 0 { return totals }
            if Int(d.next) >= size { return nil }
            index = Int(d.next)
        }
        return nil  // more descriptors than the ring has: a loop
    }
}
