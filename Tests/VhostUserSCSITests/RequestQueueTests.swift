import Dispatch
import SCSICore
import Testing
import VhostUserSCSI
import VirtioCore
import VirtioSCSI
import VirtioTestSupport

/// The guest side of virtio-scsi (virtio v1.2 §5.6.6) against the real server: a real
/// VhostUserServer and VirtioSCSIDevice, a fake QEMU frontend over the Unix socket passing
/// memfds, and recording in-memory SCSI targets behind it.
@Suite struct RequestQueueTests {
    static let responseBytes = VirtioSCSICommandResponse.byteCount

    /// §2.7.4: the device must not assume any particular buffer layout. WRITE(16) with the
    /// 51-byte header in three descriptors and data in three more, then READ(16) with the
    /// response and data-in split across descriptors.
    @Test func writeThenReadRoundTripWithSplitDescriptors() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let data = pattern(16 * 512, seed: 7)

        let (_, wUsed, wResp) = try g.execute(
            cdb: CDBs.write16(lba: 10, blocks: 16), dataOut: data,
            layout: ChainLayout(header: [5, 20], dataOut: [1000, 3000], response: [8, 50]))
        #expect(wUsed.length == UInt32(Self.responseBytes), "no data-in for a WRITE")
        #expect(wResp.response == VirtioSCSIResponse.ok.rawValue)
        #expect(wResp.status == SCSIStatus.good.rawValue)
        #expect(wResp.senseLength == 0 && wResp.residual == 0)
        #expect(h.backend.disks[0].read(block: 10, count: 16) == data, "the target got the guest's bytes")

        let (r, rUsed, rResp) = try g.execute(
            cdb: CDBs.read16(lba: 10, blocks: 16), dataIn: data.count,
            layout: ChainLayout(header: [51], response: [50, 7], dataIn: [512, 7000]))
        #expect(rResp.response == 0 && rResp.status == 0 && rResp.residual == 0)
        #expect(rUsed.length == UInt32(Self.responseBytes + data.count))
        #expect(g.dataIn(of: r) == data)

        let commands = h.backend.commands
        #expect(commands.count == 2)
        #expect(commands.map(\.opcode) == [0x8A, 0x88])
        #expect(commands.map(\.direction) == [.toDevice, .fromDevice])
        #expect(commands.map(\.transferLength) == [8192, 8192])
        #expect(commands.map(\.lun) == [0, 0])
        #expect(commands.map(\.cdb.count) == [16, 16], "CDB length from the opcode group, not all 32 bytes")
        #expect(commands[0].cdb == CDBs.write16(lba: 10, blocks: 16))
    }

    /// §2.7.5.3: the same round trip with every buffer in an indirect table, to the LUN that
    /// uses flat addressing (guest LUN 300 → backend LUN 7).
    @Test func roundTripThroughIndirectTables() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let data = pattern(8 * 512, seed: 99)
        let (_, _, wResp) = try g.execute(lun: 300, cdb: CDBs.write16(lba: 4000, blocks: 8), dataOut: data,
                                          layout: ChainLayout(header: [11, 11], dataOut: [7], response: [1], indirect: true))
        #expect(wResp.response == 0 && wResp.status == 0)
        let (r, used, rResp) = try g.execute(lun: 300, cdb: CDBs.read16(lba: 4000, blocks: 8), dataIn: data.count,
                                             layout: ChainLayout(response: [100], dataIn: [4095], indirect: true))
        #expect(rResp.response == 0 && rResp.status == 0)
        #expect(used.length == UInt32(Self.responseBytes + data.count))
        #expect(g.dataIn(of: r) == data)
        #expect(h.backend.disks[1].read(block: 4000, count: 8) == data)
        #expect(h.backend.disks[0].read(block: 4000, count: 8) != data, "LUN 0 untouched")
        #expect(h.backend.commands.map(\.lun) == [7, 7])
        #expect(h.backend.commands.map(\.backend) == [1, 1])
    }

    /// Headers sharing descriptors with data: request header and data-out in one run of
    /// readable buffers cut at odd places, response header and data-in in one writable run.
    @Test func headersSharingDescriptorsWithData() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let data = pattern(3 * 512, seed: 3)
        let (_, _, wResp) = try g.execute(cdb: CDBs.write10(lba: 1, blocks: 3), dataOut: data,
                                          layout: ChainLayout(header: [30, 40, 100], merged: true))
        #expect(wResp.response == 0 && wResp.status == 0)
        #expect(h.backend.disks[0].read(block: 1, count: 3) == data)
        let (r, used, rResp) = try g.execute(cdb: CDBs.read10(lba: 1, blocks: 3), dataIn: data.count,
                                             layout: ChainLayout(response: [100, 20, 1], merged: true))
        #expect(rResp.response == 0 && rResp.status == 0)
        #expect(used.length == UInt32(Self.responseBytes + data.count))
        #expect(g.dataIn(of: r) == data)
    }

    /// A short read: the target transfers less than the buffers offer; the residual and
    /// used length say so (§5.6.6.1: residual, len = bytes written).
    @Test func residualIsReported() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let (r, used, resp) = try g.execute(cdb: CDBs.readCapacity10, dataIn: 64)
        #expect(resp.response == 0 && resp.status == 0)
        #expect(resp.residual == 56)
        #expect(used.length == UInt32(Self.responseBytes + 8))
        #expect(g.dataIn(of: r, count: 8) == [0, 0, 0x0F, 0xFF, 0, 0, 2, 0], "last LBA 4095, 512-byte blocks")
    }

    /// Commands for a configured LUN go to the target; its status, sense and residual come
    /// back unchanged (DESIGN "Errors, by policy": SCSI errors pass through).
    @Test func targetStatusAndSensePassThrough() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let (inq, _, inqResp) = try g.execute(cdb: CDBs.inquiry(allocation: 36), dataIn: 36)
        #expect(inqResp.response == 0 && inqResp.status == 0)
        #expect(g.dataIn(of: inq, count: 16) == [0, 0, 6, 2, 31, 0, 0, 2] + Array("TESTVEND".utf8))
        let readCapacity16: [UInt8] = [0x9E, 0x10] + CDBs.be(UInt64(0)) + CDBs.be(UInt32(32)) + [0, 0]
        let (cap, _, capResp) = try g.execute(cdb: readCapacity16, dataIn: 32)
        #expect(capResp.response == 0 && capResp.status == 0 && capResp.residual == 0)
        #expect(Array(g.dataIn(of: cap)[0..<12]) == CDBs.be(UInt64(4095)) + CDBs.be(UInt32(512)))

        // Past the end of the disk: CHECK CONDITION, LBA OUT OF RANGE (21h) from the target.
        let (_, used, resp) = try g.execute(cdb: CDBs.read16(lba: 4095, blocks: 2), dataIn: 1024)
        #expect(resp.response == VirtioSCSIResponse.ok.rawValue)
        #expect(resp.status == SCSIStatus.checkCondition.rawValue)
        #expect(resp.senseLength == 18)
        #expect(resp.sense[2] == SenseKey.illegalRequest.rawValue && resp.sense[12] == 0x21)
        #expect(resp.residual == 1024)
        #expect(used.length == UInt32(Self.responseBytes))
        // An opcode the target does not know: INVALID COMMAND OPERATION CODE (20h).
        let (_, _, unknown) = try g.execute(cdb: [0xC5, 0, 0, 0, 0, 0])
        #expect(unknown.status == SCSIStatus.checkCondition.rawValue && unknown.sense[12] == 0x20)
        #expect(h.backend.commands.map(\.opcode) == [0x12, 0x9E, 0x88, 0xC5])
        #expect(h.backend.commands.map(\.cdb.count) == [6, 16, 16, 16], "vendor-specific opcodes get 16 bytes")
    }

    /// REPORT LUNS is answered by the server from its configuration (SPC-4 §6.33), in
    /// peripheral (LUN 0) and flat (LUN 300) addressing; the target never sees it.
    @Test func reportLUNsAnsweredFromConfiguration() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let (r, used, resp) = try g.execute(cdb: CDBs.reportLUNs(), dataIn: 256)
        #expect(resp.response == 0 && resp.status == 0)
        #expect(used.length == UInt32(Self.responseBytes + 24))
        #expect(resp.residual == 256 - 24)
        let d = g.dataIn(of: r, count: 24)
        #expect(Array(d[0..<4]) == [0, 0, 0, 16], "LUN list length: two entries")
        #expect(Array(d[8..<16]) == [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(Array(d[16..<24]) == [0x41, 0x2C, 0, 0, 0, 0, 0, 0], "300 = 0x12C, flat addressing 01b")
        #expect(h.backend.commands.isEmpty)
    }

    /// INQUIRY to a LUN that is not configured on an existing target: peripheral qualifier
    /// 011b, device type 1Fh (SPC-4 §6.6.2), answered locally.
    @Test func inquiryToUnconfiguredLUN() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let (r, used, resp) = try g.execute(lun: 5, cdb: CDBs.inquiry(allocation: 96), dataIn: 96)
        #expect(resp.response == 0 && resp.status == 0)
        #expect(used.length == UInt32(Self.responseBytes + 36))
        let d = g.dataIn(of: r, count: 36)
        #expect(d[0] == 0x7F)
        #expect(d[4] == 31)
        #expect(h.backend.commands.isEmpty)
    }

    /// Any other command to an unconfigured LUN: CHECK CONDITION, ILLEGAL REQUEST,
    /// LOGICAL UNIT NOT SUPPORTED (ASC 25h), fixed-format sense.
    @Test func otherCommandToUnconfiguredLUN() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let (_, used, resp) = try g.execute(lun: 5, cdb: CDBs.read10(lba: 0, blocks: 1), dataIn: 512)
        #expect(resp.response == VirtioSCSIResponse.ok.rawValue)
        #expect(resp.status == SCSIStatus.checkCondition.rawValue)
        #expect(resp.senseLength == 18)
        #expect(resp.sense[0] == 0x70)
        #expect(resp.sense[2] & 0x0F == SenseKey.illegalRequest.rawValue)
        #expect(resp.sense[12] == 0x25 && resp.sense[13] == 0)
        #expect(resp.residual == 512)
        #expect(used.length == UInt32(Self.responseBytes))
        #expect(h.backend.commands.isEmpty)
    }

    /// A target that does not exist: VIRTIO_SCSI_S_BAD_TARGET (§5.6.6.1); so is a LUN field
    /// whose first byte is not 1.
    @Test func badTarget() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let (_, used, resp) = try g.execute(target: 3, cdb: CDBs.testUnitReady)
        #expect(resp.response == VirtioSCSIResponse.badTarget.rawValue)
        #expect(used.length == UInt32(Self.responseBytes))
        let r = g.post(lunField: [2, 0, 0x40, 0, 0, 0, 0, 0], cdb: CDBs.testUnitReady)
        _ = try g.waitForUsed()
        #expect(g.response(of: r).response == VirtioSCSIResponse.badTarget.rawValue)
        #expect(h.backend.commands.isEmpty)
    }

    /// A successful command still reaches the target after a chain it refused.
    @Test func tooShortChainsAreAnsweredWithLengthZero() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let ring = g.rings[2]
        // Header only, no writable response buffer at all.
        let header = GuestDriver.requestHeader(lun: GuestDriver.lunField(target: 0, lun: 0), id: 1, cdb: CDBs.testUnitReady)
        let head = ring.addChain([.readable(g.memory.allocate(copying: header), header.count)])
        ring.publish(head)
        g.frontend.kick(2)
        let used = try g.waitForUsed()
        #expect(used == [UsedElement(id: UInt32(head), length: 0)])
        let (_, _, resp) = try g.execute(cdb: CDBs.testUnitReady)
        #expect(resp.response == 0 && resp.status == 0)
    }

    /// Hostile chains (a descriptor loop; a buffer outside guest memory; an indirect table in
    /// a hole) are answered with used length 0 and the ring keeps serving.
    @Test func hostileChainsAreRefusedAndServingContinues() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let ring = g.rings[2]
        let buf = g.memory.allocate(128)
        let a = ring.allocateDescriptor(), b = ring.allocateDescriptor()
        ring.writeDescriptor(a, MockDescriptor(address: buf, length: 64, flags: .next, next: b))
        ring.writeDescriptor(b, MockDescriptor(address: buf, length: 64, flags: .next, next: a))
        let outside = ring.addChain([.readable(buf, 51), .writable(0x8000_0000, 108)])  // the hole at 2 GiB
        let c = ring.allocateDescriptor()
        ring.writeDescriptor(c, MockDescriptor(address: 0x1_0000_0000 + (8 << 20), length: 64, flags: .indirect))
        ring.publish([a, outside, c])
        g.frontend.kick(2)
        let used = try g.waitForUsed(count: 3)
        #expect(used == [UsedElement(id: UInt32(a), length: 0), UsedElement(id: UInt32(outside), length: 0),
                         UsedElement(id: UInt32(c), length: 0)])
        #expect(g.memory.read(buf, count: 128) == [UInt8](repeating: 0, count: 128), "nothing written")

        let data = pattern(512, seed: 5)
        let (_, _, wResp) = try g.execute(cdb: CDBs.write10(lba: 0, blocks: 1), dataOut: data)
        #expect(wResp.response == 0 && wResp.status == 0)
        let (r, _, rResp) = try g.execute(cdb: CDBs.read10(lba: 0, blocks: 1), dataIn: 512)
        #expect(rResp.response == 0 && g.dataIn(of: r) == data)
        #expect(h.server.isConnected)
    }

    /// Many commands in flight at once on two request queues (held in the target), then all
    /// completed: every one is answered with its own data.
    @Test func manyRequestsInFlightOnTwoQueues() throws {
        let h = try ServerHarness(requestQueues: 2)
        defer { h.stop() }
        let g = try h.connectGuest(queueSize: 256)
        let perQueue = 64
        for block in 0..<(2 * perQueue) { h.backend.disks[0].write(block: block, pattern(512, seed: UInt32(block + 1))) }
        h.backend.hold()
        var posted: [[PostedRequest]] = [[], []]
        for i in 0..<perQueue {
            for q in 0..<2 {
                let block = UInt32(q * perQueue + i)
                posted[q].append(g.post(queue: 2 + q, cdb: CDBs.read10(lba: block, blocks: 1), dataIn: 512,
                                        layout: ChainLayout(indirect: i % 2 == 0)))
            }
        }
        #expect(h.backend.waitForCommands(2 * perQueue))
        #expect(h.backend.heldCount == 2 * perQueue)
        #expect(g.rings[2].usedIndex == 0 && g.rings[3].usedIndex == 0, "nothing completes while held")
        h.backend.releaseAll()
        for q in 0..<2 {
            let used = try g.waitForUsed(queue: 2 + q, count: perQueue)
            #expect(Set(used.map(\.id)) == Set(posted[q].map { UInt32($0.head) }))
            #expect(used.allSatisfy { $0.length == UInt32(Self.responseBytes + 512) })
            for (i, r) in posted[q].enumerated() {
                #expect(g.response(of: r).response == 0)
                #expect(g.dataIn(of: r) == pattern(512, seed: UInt32(q * perQueue + i + 1)))
            }
        }
        #expect(Set(h.backend.sessions.map { ObjectIdentifier($0.queue) }).count >= 2, "one session per request queue")
    }

    /// A slow target: completions arrive later, one by one, and the guest is interrupted for
    /// them (EVENT_IDX used_event honoured).
    @Test func delayedCompletionsInterruptTheGuest() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        h.backend.setDelay(.milliseconds(20))
        let posted = (0..<8).map { i in g.post(cdb: CDBs.read10(lba: UInt32(i), blocks: 1), dataIn: 512) }
        let used = try g.waitForUsed(count: 8)
        #expect(Set(used.map(\.id)) == Set(posted.map { UInt32($0.head) }))
    }
}
