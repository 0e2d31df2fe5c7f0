import Testing
import VirtioCore
import VirtioTestSupport

/// The device side of the split virtqueue (virtio v1.2 §2.7) against a driver-side mock.
@Suite struct SplitQueueTests {
    static func setup(size: UInt16 = 8, start: UInt16 = 0) throws -> (TestGuestMemory, MockSplitQueue) {
        let m = try TestGuestMemory(size: 1 << 20)
        return (m, MockSplitQueue(memory: m, size: size, startIndex: start))
    }

    /// §2.7.13: the driver publishes heads in the avail ring; §2.7.8: the device returns them
    /// in the used ring with the written length.
    @Test func popAvailAndPushUsed() throws {
        let (m, q) = try Self.setup()
        let buf = m.allocate(64)
        let heads = [q.addChain([.readable(buf, 16)]), q.addChain([.writable(buf + 16, 48)])]
        var device = q.deviceQueue()
        do { let value = try device.popAvail(); #expect(value == nil, "nothing published yet") }
        q.publish(heads)
        #expect(try device.pendingCount() == 2)
        do { let value = try device.popAvail(); #expect(value == heads[0]) }
        do { let value = try device.popAvail(); #expect(value == heads[1]) }
        do { let value = try device.popAvail(); #expect(value == nil) }
        #expect(device.nextAvail == 2)
        device.addUsed(head: heads[1], length: 48)
        device.addUsed(head: heads[0], length: 0)
        #expect(q.usedIndex == 0, "used elements are invisible until published")
        device.publishUsed()
        #expect(q.usedIndex == 2)
        #expect(q.popUsed() == UsedElement(id: UInt32(heads[1]), length: 48))
        #expect(q.popUsed() == UsedElement(id: UInt32(heads[0]), length: 0))
        #expect(q.popUsed() == nil)
    }

    /// §2.7.6/§2.7.8: idx fields are free-running 16-bit counters; ring slots are idx mod size.
    @Test(arguments: [UInt16(65533), 65535, 0xFFF8])
    func indicesWrapAround(start: UInt16) throws {
        let (m, q) = try Self.setup(size: 4, start: start)
        let buf = m.allocate(16)
        var device = q.deviceQueue(nextAvail: start)
        #expect(device.nextUsed == start, "the device picks up used->idx from guest memory")
        var seen: [UInt16] = []
        for round in 0..<3 {
            let heads = (0..<4).map { _ in q.addChain([.writable(buf, 16)]) }
            q.publish(heads)
            #expect(try device.pendingCount() == 4, "round \(round)")
            for _ in 0..<4 {
                let head = try #require(try device.popAvail())
                seen.append(head)
                device.addUsed(head: head, length: UInt32(head) + 100)
            }
            device.publishUsed()
            let used = (0..<4).compactMap { _ in q.popUsed() }
            #expect(used.map(\.id) == heads.map(UInt32.init))
            #expect(used.map(\.length) == heads.map { UInt32($0) + 100 })
        }
        #expect(device.nextAvail == start &+ 12)
        #expect(device.nextUsed == start &+ 12)
        #expect(q.usedIndex == start &+ 12)
    }

    /// §2.7.13.3: a driver never makes more than queue-size entries available; an avail idx
    /// that jumps further is refused rather than reading stale slots.
    @Test func availIndexTooFarAheadIsRefused() throws {
        let (_, q) = try Self.setup(size: 8, start: 65530)
        var device = q.deviceQueue()
        q.setAvailIndex(65530 &+ 9)
        #expect(throws: UnsafeSplitQueue.RingError.availIndexOutOfRange(avail: 65530 &+ 9, next: 65530)) {
            try device.popAvail()
        }
        q.setAvailIndex(65530 &+ 8)
        #expect(try device.pendingCount() == 8)
    }

    /// A head index ≥ queue size in the avail ring is refused (§2.7.13.1: heads index the table).
    @Test func headOutOfRangeIsRefused() throws {
        let (_, q) = try Self.setup(size: 8)
        var device = q.deviceQueue()
        q.publish(8)
        #expect(throws: UnsafeSplitQueue.RingError.headOutOfRange(8)) { try device.popAvail() }
    }

    /// §2.7.10 with VIRTIO_F_EVENT_IDX: the device interrupts only when the new used index
    /// passes used_event, i.e. vring_need_event(used_event, new, old) = (new - event - 1) < (new - old).
    @Test(arguments: [UInt16(0), 65530])
    func eventIndexNotification(start: UInt16) throws {
        let (m, q) = try Self.setup(size: 16, start: start)
        let buf = m.allocate(16)
        var device = q.deviceQueue(eventIndex: true)
        func complete(_ n: Int) throws {
            q.publish((0..<n).map { _ in q.addChain([.writable(buf, 16)]) })
            for _ in 0..<n { device.addUsed(head: try #require(try device.popAvail()), length: 1) }
            device.publishUsed()
            for _ in 0..<n { _ = q.popUsed() }
        }
        // The first batch after a (re)start is always signalled.
        q.setUsedEvent(start &+ 100)
        try complete(1)
        do { let value = device.needsNotification(); #expect(value) }
        let old = start &+ 1
        // used_event = old: the guest wants to hear about entry `old` → signal.
        q.setUsedEvent(old)
        try complete(2)   // new = old + 2
        do { let value = device.needsNotification(); #expect(value) }
        // used_event = new - 1 (the last entry of the batch) → signal.
        q.setUsedEvent(old &+ 3)
        try complete(2)   // old+2 → old+4
        do { let value = device.needsNotification(); #expect(value) }
        // used_event = new (not yet reached) → no signal.
        q.setUsedEvent(old &+ 6)
        try complete(2)   // old+4 → old+6
        do { let value = device.needsNotification(); #expect(!value) }
        // used_event behind old (already passed before this batch) → no signal.
        q.setUsedEvent(old &+ 5)
        try complete(1)   // old+6 → old+7
        do { let value = device.needsNotification(); #expect(!value) }
        // Asked again without new entries → nothing to say.
        q.setUsedEvent(old &+ 6)
        do { let value = device.needsNotification(); #expect(!value) }
        // resetSignalled makes the next check signal.
        try complete(1)
        device.resetSignalled()
        q.setUsedEvent(old &+ 100)
        do { let value = device.needsNotification(); #expect(value) }
    }

    /// §2.7.10: with EVENT_IDX the device publishes avail_event (after the used ring) when it
    /// re-enables kicks, and reports whether more entries arrived meanwhile.
    @Test func enableKicksWritesAvailEvent() throws {
        let (m, q) = try Self.setup(size: 8, start: 65534)
        let buf = m.allocate(16)
        var device = q.deviceQueue(eventIndex: true)
        q.publish([q.addChain([.writable(buf, 16)]), q.addChain([.writable(buf, 16)])])
        _ = try device.popAvail()
        do { let value = device.enableKicks(); #expect(value, "one entry is still pending") }
        #expect(q.availEvent == 65535)
        _ = try device.popAvail()
        do { let value = device.enableKicks(); #expect(!value) }
        #expect(q.availEvent == 0, "avail_event wraps with the index")
    }

    @Test func enableKicksWithoutEventIndexLeavesAvailEventAlone() throws {
        let (m, q) = try Self.setup(size: 8)
        let buf = m.allocate(16)
        var device = q.deviceQueue(eventIndex: false)
        q.publish(q.addChain([.writable(buf, 16)]))
        _ = try device.popAvail()
        do { let value = device.enableKicks(); #expect(!value) }
        #expect(q.availEvent == 0)
    }

    /// §2.7.7.2 without EVENT_IDX: VIRTQ_AVAIL_F_NO_INTERRUPT suppresses interrupts; with
    /// VIRTIO_F_NOTIFY_ON_EMPTY the device still interrupts when the avail ring is empty.
    @Test(arguments: [false, true])
    func noInterruptFlag(notifyOnEmpty: Bool) throws {
        let (m, q) = try Self.setup(size: 8)
        let buf = m.allocate(16)
        var device = q.deviceQueue(eventIndex: false, notifyOnEmpty: notifyOnEmpty)
        func complete(leavePending: Bool) throws {
            q.publish(q.addChain([.writable(buf, 16)]))
            if leavePending { q.publish(q.addChain([.writable(buf, 16)])) }
            device.addUsed(head: try #require(try device.popAvail()), length: 1)
            device.publishUsed()
        }
        try complete(leavePending: false)
        do { let value = device.needsNotification(); #expect(value, "flag clear: interrupt") }
        q.setAvailFlags(1)
        try complete(leavePending: true)
        do { let value = device.needsNotification(); #expect(!value, "NO_INTERRUPT and the ring is not empty") }
        _ = try device.popAvail()   // drain the pending one without completing it
        device.addUsed(head: 0, length: 0)
        device.publishUsed()
        do { let value = device.needsNotification(); #expect(value == notifyOnEmpty, "ring empty: only NOTIFY_ON_EMPTY interrupts") }
    }

    /// §2.7: queue size is a power of 2 no larger than 32768.
    @Test func validSizes() {
        #expect(SplitQueueLayout.isValidSize(1))
        #expect(SplitQueueLayout.isValidSize(256))
        #expect(SplitQueueLayout.isValidSize(32768))
        #expect(!SplitQueueLayout.isValidSize(0))
        #expect(!SplitQueueLayout.isValidSize(65536))
        #expect(!SplitQueueLayout.isValidSize(96))
        #expect(SplitQueueLayout.descriptorTableBytes(size: 256) == 4096)
        #expect(SplitQueueLayout.availRingBytes(size: 256) == 6 + 512)
        #expect(SplitQueueLayout.usedRingBytes(size: 256) == 6 + 2048)
    }
}
