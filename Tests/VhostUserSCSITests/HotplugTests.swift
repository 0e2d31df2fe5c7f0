import Dispatch
import SCSICore
import Synchronization
import Testing
import VhostUserSCSI
import VirtioCore
import VirtioSCSI
import VirtioTestSupport

/// LUNs added and removed at runtime and capacity changes, as the guest sees them: the
/// event queue (virtio v1.2 §5.6.6.3), REPORT LUNS and the request queues, against the real
/// server. The event bytes are checked the way Linux's virtio_scsi reads them: lun[1] is the
/// target, lun[2] << 8 | lun[3] the LUN number (REPORT LUNS encoding), `reason` little-endian.
@Suite struct HotplugTests {
    static let responseBytes = VirtioSCSICommandResponse.byteCount
    /// What QEMU's vhost-user-scsi acknowledges with its defaults hotplug=on, param_change=on.
    static let hotplugFeatures = FakeFrontend.qemuFeatures.union([.scsiHotplug, .scsiChange])

    static func address(_ target: UInt8, _ lun: UInt16) -> VirtioSCSIAddress { VirtioSCSIAddress(target: target, lun: lun) }

    /// The 16-byte virtio_scsi_event Linux would receive: event, lun[8], reason (all LE).
    static func eventBytes(_ event: UInt32, lun: [UInt8], reason: UInt32) -> [UInt8] {
        withUnsafeBytes(of: event.littleEndian, Array.init) + lun + withUnsafeBytes(of: reason.littleEndian, Array.init)
    }

    @Test func deviceOffersHotplugAndChange() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest(features: Self.hotplugFeatures)
        let offered = try #require(g.frontend.offeredFeatures)
        #expect(offered.isSuperset(of: [.scsiHotplug, .scsiChange]))
        #expect(!offered.contains(.scsiInout) && !offered.contains(.scsiT10PI))
        #expect(g.frontend.features.isSuperset(of: [.scsiHotplug, .scsiChange]))
    }

    /// A LUN added at runtime: the guest gets TRANSPORT_RESET / RESET_RESCAN for it (Linux:
    /// scsi_add_device), REPORT LUNS lists it, and its commands reach a session made for the
    /// new unit's id.
    @Test func addedLUNIsAnnouncedListedAndServed() throws {
        let h = try ServerHarness(spareDisks: 1)
        defer { h.stop() }
        let g = try h.connectGuest(features: Self.hotplugFeatures)
        let buffer = g.postEventBuffer()
        let outcomes = Outcomes()
        let registered = Mutex<Int?>(nil)
        let id = try h.device.addLUN(address: Self.address(0, 5), backendLUN: 3,
                                     register: { id in registered.withLock { $0 = id } }, completion: outcomes.record)
        #expect(id == 2, "ids 0 and 1 are the units given at startup")
        #expect(registered.withLock { $0 } == 2)
        let used = try g.waitForUsed(queue: 1)
        #expect(used == [UsedElement(id: UInt32(buffer.head), length: 16)])
        #expect(g.memory.read(buffer.address, count: 16) ==
                Self.eventBytes(VirtioSCSIEvent.transportReset, lun: [1, 0, 0, 5, 0, 0, 0, 0], reason: 1))
        #expect(outcomes.wait(1) == [.delivered])
        #expect(h.device.logicalUnits.map(\.address) == [Self.address(0, 0), Self.address(0, 5), Self.address(0, 300)])
        #expect(h.device.logicalUnits.first { $0.id == 2 } == LogicalUnit(id: 2, address: Self.address(0, 5), backendLUN: 3))

        let (r, _, resp) = try g.execute(cdb: CDBs.reportLUNs(), dataIn: 256)
        #expect(resp.response == 0 && resp.status == 0)
        let d = g.dataIn(of: r, count: 32)
        #expect(Array(d[0..<4]) == [0, 0, 0, 24], "three LUNs")
        #expect(Array(d[16..<24]) == [0, 5, 0, 0, 0, 0, 0, 0])

        let data = pattern(512, seed: 21)
        h.backend.disks[2].write(block: 7, data)
        let (read, _, readResp) = try g.execute(lun: 5, cdb: CDBs.read10(lba: 7, blocks: 1), dataIn: 512)
        #expect(readResp.response == 0 && readResp.status == 0)
        #expect(g.dataIn(of: read) == data)
        let last = try #require(h.backend.commands.last)
        #expect(last.backend == 2 && last.lun == 3, "id 2, backend LUN 3")
        #expect(h.backend.sessions.contains { $0.backend == 2 }, "a session made for id 2")
    }

    /// A LUN of 256 or more on a target that did not exist yet: the event carries it in flat
    /// addressing, as REPORT LUNS lists it, and the new target answers.
    @Test func addedLUNOnANewTargetInFlatAddressing() throws {
        let h = try ServerHarness(spareDisks: 1)
        defer { h.stop() }
        let g = try h.connectGuest(features: Self.hotplugFeatures)
        let (_, _, before) = try g.execute(target: 2, lun: 256, cdb: CDBs.testUnitReady)
        #expect(before.response == VirtioSCSIResponse.badTarget.rawValue)
        let buffer = g.postEventBuffer()
        try h.device.addLUN(address: Self.address(2, 256), backendLUN: 1)
        _ = try g.waitForUsed(queue: 1)
        #expect(Array(g.memory.read(buffer.address, count: 16)[4..<12]) == [1, 2, 0x41, 0x00, 0, 0, 0, 0])
        let (r, _, _) = try g.execute(target: 2, lun: 256, cdb: CDBs.reportLUNs(), dataIn: 64)
        #expect(Array(g.dataIn(of: r, count: 16)[8..<16]) == [0x41, 0x00, 0, 0, 0, 0, 0, 0])
        let (_, _, after) = try g.execute(target: 2, lun: 256, cdb: CDBs.testUnitReady)
        #expect(after.response == 0 && after.status == 0)
    }

    /// Removing a LUN with commands in flight on two request queues: they complete as
    /// VIRTIO_SCSI_S_ABORTED, the guest gets TRANSPORT_RESET / RESET_REMOVED (Linux:
    /// scsi_remove_device), the next command gets LOGICAL UNIT NOT SUPPORTED, REPORT LUNS and
    /// task management forget it, and a command in flight on the other LUN is not touched.
    @Test func removedLUNAbortsItsCommandsAndIsAnnounced() throws {
        let h = try ServerHarness(requestQueues: 2)
        defer { h.stop() }
        let g = try h.connectGuest(features: Self.hotplugFeatures)
        let buffer = g.postEventBuffer()
        h.backend.hold()
        let victim = g.post(queue: 2, lun: 300, cdb: CDBs.read10(lba: 0, blocks: 1), dataIn: 512)
        let victim2 = g.post(queue: 3, lun: 300, cdb: CDBs.write10(lba: 1, blocks: 1), dataOut: pattern(512, seed: 1))
        let bystander = g.post(queue: 2, lun: 0, cdb: CDBs.read10(lba: 0, blocks: 1), dataIn: 512)
        #expect(h.backend.waitForCommands(3))

        let outcomes = Outcomes()
        let removed = try h.device.removeLUN(address: Self.address(0, 300), completion: outcomes.record)
        #expect(removed == LogicalUnit(id: 1, address: Self.address(0, 300), backendLUN: 7))
        #expect(outcomes.wait(1) == [.delivered])

        // The commands in flight on the removed LUN were completed before the event was sent.
        #expect(g.rings[2].usedIndex == 1 && g.rings[3].usedIndex == 1)
        let aborted = try g.waitForUsed(queue: 2)
        #expect(aborted.map(\.id) == [UInt32(victim.head)])
        #expect(aborted.first?.length == UInt32(Self.responseBytes), "no data for an aborted command")
        #expect(g.response(of: victim).response == VirtioSCSIResponse.aborted.rawValue)
        #expect(try g.waitForUsed(queue: 3).map(\.id) == [UInt32(victim2.head)])
        #expect(g.response(of: victim2).response == VirtioSCSIResponse.aborted.rawValue)

        #expect(try g.waitForUsed(queue: 1) == [UsedElement(id: UInt32(buffer.head), length: 16)])
        #expect(g.memory.read(buffer.address, count: 16) ==
                Self.eventBytes(VirtioSCSIEvent.transportReset, lun: [1, 0, 0x41, 0x2C, 0, 0, 0, 0], reason: 2))

        // The other LUN's command is still held, and completes normally.
        #expect(h.backend.heldCount == 1)
        h.backend.releaseAll()
        #expect(try g.waitForUsed(queue: 2).map(\.id) == [UInt32(bystander.head)])
        #expect(g.response(of: bystander).response == 0 && g.response(of: bystander).status == 0)

        let commandsBefore = h.backend.commands.count
        for queue in [2, 3] {
            let (_, used, resp) = try g.execute(queue: queue, lun: 300, cdb: CDBs.read10(lba: 0, blocks: 1), dataIn: 512)
            #expect(resp.response == VirtioSCSIResponse.ok.rawValue)
            #expect(resp.status == SCSIStatus.checkCondition.rawValue)
            #expect(resp.sense[2] & 0x0F == SenseKey.illegalRequest.rawValue && resp.sense[12] == 0x25 && resp.sense[13] == 0,
                    "LOGICAL UNIT NOT SUPPORTED")
            #expect(used.length == UInt32(Self.responseBytes))
        }
        let (r, _, _) = try g.execute(cdb: CDBs.reportLUNs(), dataIn: 256)
        #expect(Array(g.dataIn(of: r, count: 8)[0..<4]) == [0, 0, 0, 8], "only LUN 0 is left")
        let (_, tmfResponse) = g.postTMF(subtype: .logicalUnitReset, lun: 300)
        _ = try g.waitForUsed(queue: 0)
        #expect(g.memory.read(tmfResponse, count: 1) == [VirtioSCSIResponse.incorrectLUN.rawValue])
        #expect(h.backend.commands.count == commandsBefore, "nothing more reached the removed unit")
        let (_, _, still) = try g.execute(lun: 0, cdb: CDBs.testUnitReady)
        #expect(still.response == 0 && still.status == 0)
        #expect(h.device.logicalUnits.map(\.id) == [0])
    }

    /// A capacity change: VIRTIO_SCSI_T_PARAM_CHANGE with reason 0x092A (ASC 2Ah CAPACITY DATA
    /// HAS CHANGED | ASCQ 09h << 8), on which Linux calls scsi_rescan_device.
    @Test func capacityChangeIsAnnounced() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest(features: Self.hotplugFeatures)
        let buffer = g.postEventBuffer()
        let outcomes = Outcomes()
        try h.device.reportCapacityChanged(address: Self.address(0, 0), completion: outcomes.record)
        _ = try g.waitForUsed(queue: 1)
        #expect(g.memory.read(buffer.address, count: 16) ==
                Self.eventBytes(VirtioSCSIEvent.paramChange, lun: [1, 0, 0, 0, 0, 0, 0, 0], reason: 0x092A))
        #expect(outcomes.wait(1) == [.delivered])
        #expect(throws: LUNMapError.noSuchLUN(Self.address(0, 9))) {
            try h.device.reportCapacityChanged(address: Self.address(0, 9))
        }
    }

    /// Without the feature bits the guest gets no event (it did not ask for them); the change
    /// itself still takes effect. Each event needs its own bit.
    @Test func noEventWithoutTheFeature() throws {
        let h = try ServerHarness(spareDisks: 1)
        defer { h.stop() }
        let g = try h.connectGuest(features: FakeFrontend.qemuFeatures.union(.scsiHotplug))
        #expect(!g.frontend.features.contains(.scsiChange))
        _ = g.postEventBuffer()
        let outcomes = Outcomes()
        try h.device.reportCapacityChanged(address: Self.address(0, 0), completion: outcomes.record)
        #expect(outcomes.wait(1) == [.notNegotiated])
        #expect(g.rings[1].usedIndex == 0, "VIRTIO_SCSI_F_CHANGE was not negotiated")
        try h.device.addLUN(address: Self.address(0, 5), backendLUN: 3, completion: outcomes.record)
        #expect(outcomes.wait(2) == [.notNegotiated, .delivered], "VIRTIO_SCSI_F_HOTPLUG was")

        let h2 = try ServerHarness(spareDisks: 1)
        defer { h2.stop() }
        let g2 = try h2.connectGuest()
        #expect(!g2.frontend.features.contains(.scsiHotplug))
        _ = g2.postEventBuffer()
        let outcomes2 = Outcomes()
        try h2.device.addLUN(address: Self.address(0, 5), backendLUN: 3, completion: outcomes2.record)
        try h2.device.removeLUN(address: Self.address(0, 300), completion: outcomes2.record)
        #expect(outcomes2.wait(2) == [.notNegotiated, .notNegotiated])
        #expect(g2.rings[1].usedIndex == 0)
        let (r, _, _) = try g2.execute(cdb: CDBs.reportLUNs(), dataIn: 256)
        #expect(Array(g2.dataIn(of: r, count: 4)) == [0, 0, 0, 16], "LUNs 0 and 5: the map changed anyway")
    }

    /// Re-adding a LUN at an address that was removed gives a new id: commands go to a new
    /// session for the new id, never to the removed unit's.
    @Test func readdingAtTheSameAddressGetsANewID() throws {
        let h = try ServerHarness(spareDisks: 2)
        defer { h.stop() }
        let g = try h.connectGuest(features: Self.hotplugFeatures)
        let address = Self.address(0, 5)
        let first = try h.device.addLUN(address: address, backendLUN: 3)
        _ = try g.execute(lun: 5, cdb: CDBs.testUnitReady)
        try h.device.removeLUN(address: address)
        #expect(throws: LUNMapError.noSuchLUN(address)) { try h.device.removeLUN(address: address) }
        let second = try h.device.addLUN(address: address, backendLUN: 3)
        #expect(first == 2 && second == 3)
        #expect(throws: LUNMapError.addressInUse(address)) { try h.device.addLUN(address: address, backendLUN: 4) }
        h.backend.disks[3].write(block: 0, pattern(512, seed: 3))
        let (r, _, resp) = try g.execute(lun: 5, cdb: CDBs.read10(lba: 0, blocks: 1), dataIn: 512)
        #expect(resp.response == 0 && resp.status == 0)
        #expect(g.dataIn(of: r) == pattern(512, seed: 3), "the new unit's disk")
        #expect(h.backend.commands.map(\.backend) == [2, 3])
        #expect(h.backend.sessions.map(\.backend).filter { $0 >= 2 } == [2, 3])
    }

    /// An event raised while the guest has no buffer posted is dropped and the next buffer
    /// says VIRTIO_SCSI_T_EVENTS_MISSED (Linux then rescans the bus).
    @Test func changeWithoutABufferIsReportedAsMissed() throws {
        let h = try ServerHarness(spareDisks: 1)
        defer { h.stop() }
        let g = try h.connectGuest(features: Self.hotplugFeatures)
        let outcomes = Outcomes()
        try h.device.addLUN(address: Self.address(0, 5), backendLUN: 3, completion: outcomes.record)
        #expect(outcomes.wait(1) == [.missed])
        let buffer = g.postEventBuffer()
        _ = try g.waitForUsed(queue: 1)
        #expect(Array(g.memory.read(buffer.address, count: 4)) == [0, 0, 0, 0x80], "NO_EVENT | EVENTS_MISSED")
    }

    /// Changes made one after another reach the guest in that order, even when each waits
    /// for every queue: add, remove, add again at one address gives RESCAN, REMOVED, RESCAN.
    @Test func eventsFollowTheOrderOfChanges() throws {
        let h = try ServerHarness(requestQueues: 3, spareDisks: 3)
        defer { h.stop() }
        let g = try h.connectGuest(features: Self.hotplugFeatures)
        let buffers = (0..<4).map { _ in g.postEventBuffer() }
        let address = Self.address(1, 1)
        try h.device.addLUN(address: address, backendLUN: 1)
        try h.device.removeLUN(address: address)
        try h.device.addLUN(address: address, backendLUN: 2)
        try h.device.reportCapacityChanged(address: address)
        _ = try g.waitForUsed(queue: 1, count: 4)
        let events = buffers.map { g.memory.read($0.address, count: 16) }
        #expect(events.map { $0[0] } == [1, 1, 1, 3])
        #expect(events.map { $0[12] } == [1, 2, 1, 0x2A])
        #expect(events.allSatisfy { Array($0[4..<8]) == [1, 1, 0, 1] })
    }
}

/// Collects the `GuestNotification`s of completions, which run on the event queue.
final class Outcomes: Sendable {
    private let values = Mutex<[GuestNotification]>([])

    var record: @Sendable (GuestNotification) -> Void { { [self] value in values.withLock { $0.append(value) } } }

    /// Waits (bounded) for `count` outcomes and returns them in arrival order.
    func wait(_ count: Int, timeout: Double = 5) -> [GuestNotification] {
        _ = waitUntil(timeout: timeout) { values.withLock { $0.count } >= count }
        return values.withLock { $0 }
    }
}

extension GuestDriver {
    /// Posts one 16-byte writable buffer on the event queue (vring 1) and kicks, as Linux
    /// keeps eight posted (virtscsi_kick_event_all).
    func postEventBuffer() -> (head: UInt16, address: UInt64) {
        let address = memory.allocate(copying: [UInt8](repeating: 0xEE, count: VirtioSCSIEvent.byteCount))
        let head = rings[1].addChain([.writable(address, VirtioSCSIEvent.byteCount)])
        rings[1].publish(head)
        frontend.kick(1)
        return (head, address)
    }
}
