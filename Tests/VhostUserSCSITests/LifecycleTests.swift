import Dispatch
import Glibc
import SCSICore
import Testing
import VhostUserProtocol
import VhostUserSCSI
import VirtioCore
import VirtioSCSI
import VirtioTestSupport

/// Ring stop/restart, task management, reconnects and protocol violations against the real
/// server (vhost-user spec "Ring states", virtio v1.2 §5.6.6.2).
@Suite struct LifecycleTests {
    static let responseBytes = VirtioSCSICommandResponse.byteCount

    /// GET_VRING_BASE stops the ring: it must wait until every request taken from it has
    /// completed and its used element is written, then report the next avail index. After
    /// SET_VRING_BASE with that index the ring resumes where it stopped.
    @Test func getVringBaseWaitsForInFlightRequests() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        h.backend.hold()
        let posted = (0..<3).map { i in g.post(cdb: CDBs.read10(lba: UInt32(i), blocks: 1), dataIn: 512) }
        #expect(h.backend.waitForCommands(3))
        let delay = 0.3
        let backend = h.backend
        DispatchQueue.global().asyncAfter(deadline: .now() + delay) { backend.releaseAll() }
        let start = monotonicSeconds()
        let base = try g.frontend.getVringBase(2)
        let elapsed = monotonicSeconds() - start
        #expect(base == 3)
        #expect(elapsed >= delay * 0.8, "GET_VRING_BASE answered after \(elapsed)s, before the requests completed")
        // The used elements are in guest memory before the reply, without waiting.
        #expect(g.rings[2].usedIndex == 3)
        var used: [UsedElement] = []
        while let e = g.rings[2].popUsed() { used.append(e) }
        #expect(Set(used.map(\.id)) == Set(posted.map { UInt32($0.head) }))
        #expect(posted.allSatisfy { g.response(of: $0).response == 0 })

        // Stopped: a request posted now stays on the ring ...
        let later = g.post(cdb: CDBs.testUnitReady)
        // ... until the frontend restarts the ring at the reported base (as after migration).
        try g.frontend.setVringBase(2, UInt16(base))
        try g.frontend.setVringAddr(g.rings[2].vringAddress(index: 2))
        try g.frontend.setVringKick(2)
        let after = try g.waitForUsed()
        #expect(after.map(\.id) == [UInt32(later.head)])
        #expect(g.response(of: later).response == 0)
        #expect(h.backend.commands.count == 4)
    }

    /// GET_VRING_BASE with nothing in flight answers at once with the avail position.
    @Test func getVringBaseOfAnIdleRing() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        for _ in 0..<5 { _ = try g.execute(cdb: CDBs.testUnitReady) }
        #expect(try g.frontend.getVringBase(2) == 5)
        #expect(try g.frontend.getVringBase(0) == 0)
    }

    /// TMF LOGICAL UNIT RESET on the control queue (§5.6.6.2) is carried out on the target
    /// and answered with VIRTIO_SCSI_S_FUNCTION_COMPLETE (0) in the one-byte response.
    @Test func logicalUnitResetIsAnswered() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        _ = try g.execute(cdb: CDBs.testUnitReady)   // the session exists
        let (head, response) = g.postTMF(subtype: .logicalUnitReset, lun: 0)
        let used = try g.waitForUsed(queue: 0)
        #expect(used == [UsedElement(id: UInt32(head), length: 1)])
        #expect(g.memory.read(response, count: 1) == [VirtioSCSIResponse.functionComplete.rawValue])
        let tmfs = h.backend.taskManagementCalls
        #expect(tmfs.map(\.function) == [.logicalUnitReset])
        #expect(tmfs.map(\.lun) == [0])
    }

    /// A LUN reset with commands in flight on two request queues (two I_T nexuses): one queue's
    /// session carries the reset, the other's an ABORT TASK SET that collects what the reset
    /// ended there. Every command the reset ended answers VIRTIO_SCSI_S_RESET (§5.6.6.1), which
    /// Linux retries; VIRTIO_SCSI_S_ABORTED would fail it with an I/O error in the guest.
    @Test func logicalUnitResetEndsCommandsOnEveryQueueAsReset() throws {
        let h = try ServerHarness(requestQueues: 2)
        defer { h.stop() }
        let g = try h.connectGuest()
        _ = try g.execute(queue: 2, cdb: CDBs.testUnitReady)
        _ = try g.execute(queue: 3, cdb: CDBs.testUnitReady)
        h.backend.hold()
        let first = g.post(queue: 2, cdb: CDBs.read10(lba: 0, blocks: 1), dataIn: 512)
        let second = g.post(queue: 3, cdb: CDBs.read10(lba: 1, blocks: 1), dataIn: 512)
        #expect(h.backend.waitForCommands(4), "the two TEST UNIT READYs and the two held reads")
        #expect(h.backend.heldCount == 2)
        let (_, tmfResponse) = g.postTMF(subtype: .logicalUnitReset, lun: 0)
        _ = try g.waitForUsed(queue: 0)
        #expect(g.memory.read(tmfResponse, count: 1) == [VirtioSCSIResponse.functionComplete.rawValue])
        #expect(h.backend.taskManagementCalls.map(\.function) == [.logicalUnitReset, .abortTaskSetAfterLogicalUnitReset])
        #expect(try g.waitForUsed(queue: 2).map(\.id) == [UInt32(first.head)])
        #expect(try g.waitForUsed(queue: 3).map(\.id) == [UInt32(second.head)])
        #expect(g.response(of: first).response == VirtioSCSIResponse.reset.rawValue)
        #expect(g.response(of: second).response == VirtioSCSIResponse.reset.rawValue)
    }

    /// TMF to a target that does not exist: VIRTIO_SCSI_S_BAD_TARGET; to an unconfigured LUN:
    /// VIRTIO_SCSI_S_INCORRECT_LUN.
    @Test func tmfToUnknownTargetOrLUN() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let (_, badTarget) = g.postTMF(subtype: .logicalUnitReset, target: 9)
        _ = try g.waitForUsed(queue: 0)
        #expect(g.memory.read(badTarget, count: 1) == [VirtioSCSIResponse.badTarget.rawValue])
        let (_, badLUN) = g.postTMF(subtype: .logicalUnitReset, lun: 77)
        _ = try g.waitForUsed(queue: 0)
        #expect(g.memory.read(badLUN, count: 1) == [VirtioSCSIResponse.incorrectLUN.rawValue])
        #expect(h.backend.taskManagementCalls.isEmpty)
    }

    /// ABORT TASK of a held command: the command completes with VIRTIO_SCSI_S_ABORTED before
    /// the TMF is answered (function complete); another held command is not touched.
    @Test func abortTaskCompletesTheCommandBeforeTheTMFAnswer() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        h.backend.hold()
        let victim = g.post(id: 42, cdb: CDBs.read10(lba: 0, blocks: 1), dataIn: 512)
        let bystander = g.post(id: 43, cdb: CDBs.read10(lba: 1, blocks: 1), dataIn: 512)
        #expect(h.backend.waitForCommands(2))
        let (tmfHead, tmfResponse) = g.postTMF(subtype: .abortTask, lun: 0, id: 42)
        let tmfUsed = try g.waitForUsed(queue: 0)
        #expect(tmfUsed == [UsedElement(id: UInt32(tmfHead), length: 1)])
        // By the time the TMF answer is visible, the aborted command's is too.
        #expect(g.rings[2].usedIndex == 1)
        #expect(g.memory.read(tmfResponse, count: 1) == [VirtioSCSIResponse.functionComplete.rawValue])
        let first = try #require(g.rings[2].popUsed())
        #expect(first.id == UInt32(victim.head))
        #expect(g.response(of: victim).response == VirtioSCSIResponse.aborted.rawValue)
        #expect(first.length == UInt32(Self.responseBytes), "no data for an aborted command")
        #expect(h.backend.taskManagementCalls.first?.aborted.count == 1)

        h.backend.releaseAll()
        let rest = try g.waitForUsed()
        #expect(rest.map(\.id) == [UInt32(bystander.head)])
        #expect(g.response(of: bystander).response == VirtioSCSIResponse.ok.rawValue)
    }

    /// After the frontend disconnects the server cleans up and a new frontend (new memory,
    /// new rings) can connect and do I/O; the data written before is still there.
    @Test func reconnectAfterDisconnect() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let data = pattern(2048, seed: 11)
        do {
            let g = try h.connectGuest()
            let (_, _, resp) = try g.execute(cdb: CDBs.write16(lba: 100, blocks: 4), dataOut: data)
            #expect(resp.response == 0 && resp.status == 0)
            g.frontend.disconnect()
        }
        #expect(h.waitDisconnected(), "the server noticed the disconnect")
        let g2 = try h.connectGuest()
        let (r, _, resp) = try g2.execute(cdb: CDBs.read16(lba: 100, blocks: 4), dataIn: data.count)
        #expect(resp.response == 0 && resp.status == 0)
        #expect(g2.dataIn(of: r) == data)
        #expect(h.server.isConnected)
    }

    /// Disconnecting with commands in flight: the server waits for them (they complete
    /// once released) and then serves the next frontend.
    @Test func disconnectWithRequestsInFlight() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        do {
            let g = try h.connectGuest()
            h.backend.hold()
            for i in 0..<4 { g.post(cdb: CDBs.read10(lba: UInt32(i), blocks: 1), dataIn: 512) }
            #expect(h.backend.waitForCommands(4))
            g.frontend.disconnect()
        }
        let backend = h.backend
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.1) { backend.releaseAll() }
        #expect(h.waitDisconnected(timeout: 10))
        let g2 = try h.connectGuest()
        let (_, _, resp) = try g2.execute(cdb: CDBs.testUnitReady)
        #expect(resp.response == 0)
    }

    /// A second frontend while one is connected is refused; the first keeps working.
    @Test func secondConcurrentFrontendIsRefused() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let intruder = try FakeFrontend(socketPath: h.socketPath, timeout: 5)
        #expect(throws: FakeFrontend.Error.disconnected) { _ = try intruder.getFeatures() }
        let (_, _, resp) = try g.execute(cdb: CDBs.testUnitReady)
        #expect(resp.response == 0)
    }

    enum Malformed: String, CaseIterable, CustomTestStringConvertible {
        case setVringNumWrongPayloadSize
        case ringIndexOutOfRange
        case setMemTableWrongFDCount
        case unknownRequest
        case badVersion
        case enableUnknownRing

        var testDescription: String { rawValue }
    }

    /// Protocol violations are refused with an error ack or a dropped connection (DESIGN
    /// "Errors, by policy"); the server goes on serving a fresh connection.
    @Test(arguments: Malformed.allCases)
    func malformedMessages(_ kind: Malformed) throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let memory = try TestGuestMemory(regions: [(0, 1 << 20), (0x100000, 1 << 20)])
        do {
            let f = try FakeFrontend(socketPath: h.socketPath)
            try f.negotiate()
            #expect(f.replyAck)
            let needReply: VhostUserHeaderFlags = [.version1, .needReply]
            let code: UInt32
            switch kind {
            case .setVringNumWrongPayloadSize:
                code = VhostUserRequest.setVringNum.rawValue
                try f.sendRaw(request: code, flags: needReply, payload: [2, 0, 0, 0])
            case .ringIndexOutOfRange:
                code = VhostUserRequest.setVringNum.rawValue
                try f.sendRaw(request: code, flags: needReply, payload: VringState(index: 99, num: 128).encoded())
            case .enableUnknownRing:
                code = VhostUserRequest.setVringEnable.rawValue
                try f.sendRaw(request: code, flags: needReply, payload: VringState(index: 1000, num: 1).encoded())
            case .setMemTableWrongFDCount:
                code = VhostUserRequest.setMemTable.rawValue
                try f.sendRaw(request: code, flags: needReply, payload: memory.memoryTable.encoded(),
                              fds: [memory.fileDescriptors[0]])
            case .unknownRequest:
                code = 999
                try f.sendRaw(request: code, flags: needReply, payload: FakeFrontend.u64(0))
            case .badVersion:
                code = VhostUserRequest.getFeatures.rawValue
                try f.sendRaw(request: code, flags: VhostUserHeaderFlags(rawValue: 2))
            }
            let outcome = try f.awaitOutcome(of: code, expectAck: true)
            switch outcome {
            case .ack(let value):
                #expect(value != 0, "an error ack")
                // Not fatal: the same connection still answers.
                #expect(try f.getQueueNum() == 3)
            case .disconnected:
                break
            case .reply(let bytes):
                Issue.record("unexpected reply \(bytes)")
            }
            if kind == .ringIndexOutOfRange {
                #expect(outcome == .ack(1), "a bad ring index is refused with an error ack, not a disconnect")
            }
            if kind == .unknownRequest || kind == .setMemTableWrongFDCount || kind == .setVringNumWrongPayloadSize {
                #expect(outcome == .disconnected)
            }
        }
        #expect(h.waitDisconnected(), "the first connection is gone")
        let g = try h.connectGuest()
        let data = pattern(512, seed: 1)
        let (_, _, wResp) = try g.execute(cdb: CDBs.write10(lba: 9, blocks: 1), dataOut: data)
        #expect(wResp.response == 0 && wResp.status == 0)
        let (r, _, rResp) = try g.execute(cdb: CDBs.read10(lba: 9, blocks: 1), dataIn: 512)
        #expect(rResp.response == 0 && g.dataIn(of: r) == data)
    }

    /// Negotiation as QEMU does it: what the backend offers and answers.
    @Test func negotiationOffersWhatQEMUNeeds() throws {
        let h = try ServerHarness(requestQueues: 4)
        defer { h.stop() }
        let f = try FakeFrontend(socketPath: h.socketPath)
        let features = try f.getFeatures()
        #expect(features.isSuperset(of: [.version1, .eventIndex, .indirectDescriptors, .protocolFeatures]))
        #expect(!features.contains(.ringPacked))
        let protocolFeatures = try f.getProtocolFeatures()
        #expect(protocolFeatures.isSuperset(of: [.replyAck, .mq]))
        try f.setProtocolFeatures([.replyAck, .mq])
        #expect(try f.getQueueNum() == 6, "control + event + 4 request queues")
        try f.setOwner()
        try f.setFeatures(features.intersection(FakeFrontend.qemuFeatures))
        // A protocol feature that was never offered is refused with an error ack.
        #expect(throws: FakeFrontend.Error.nack(request: VhostUserRequest.setProtocolFeatures.rawValue, value: 1)) {
            try f.setProtocolFeatures(VhostUserProtocolFeatures(rawValue: 1 << 60).union(.replyAck))
        }
        // SET_VRING_NUM with a size that is not a power of 2.
        #expect(throws: FakeFrontend.Error.nack(request: VhostUserRequest.setVringNum.rawValue, value: 1)) {
            try f.setVringNum(2, 100)
        }
    }

    /// An event posted by the device lands in a buffer the driver left on the event queue
    /// (§5.6.6.3); with no buffer it is remembered as missed.
    @Test func eventQueueDeliversEvents() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let ring = g.rings[1]
        let buffer = g.memory.allocate(16)
        let head = ring.addChain([.writable(buffer, 16)])
        ring.publish(head)
        g.frontend.kick(1)
        h.device.post(VirtioSCSIEvent(event: VirtioSCSIEvent.transportReset, address: VirtioSCSIAddress(target: 0, lun: 3),
                                      reason: 1))
        let used = try g.waitForUsed(queue: 1)
        #expect(used == [UsedElement(id: UInt32(head), length: 16)])
        let e = g.memory.read(buffer, count: 16)
        #expect(Array(e[0..<4]) == [1, 0, 0, 0])
        #expect(Array(e[4..<8]) == [1, 0, 0, 3], "the LUN as REPORT LUNS encodes it")
        #expect(Array(e[12..<16]) == [1, 0, 0, 0])
    }

    /// An event with no buffer to carry it is dropped; the next buffer the driver gives is
    /// answered at once with VIRTIO_SCSI_T_NO_EVENT | VIRTIO_SCSI_T_EVENTS_MISSED so the driver
    /// rescans (virtio v1.2 §5.6.6.3.1), and the flag is cleared after that.
    @Test func missedEventsAreReportedWhenABufferArrives() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let ring = g.rings[1]
        h.device.post(VirtioSCSIEvent(event: VirtioSCSIEvent.transportReset, address: VirtioSCSIAddress(target: 0, lun: 0),
                                      reason: 1))
        // Let the device see that there was no buffer for it.
        h.device.dispatchQueue(forVring: 1).sync {}
        #expect(ring.usedIndex == 0)
        let buffer = g.memory.allocate(16)
        let head = ring.addChain([.writable(buffer, 16)])
        ring.publish(head)
        g.frontend.kick(1)
        let used = try g.waitForUsed(queue: 1)
        #expect(used == [UsedElement(id: UInt32(head), length: 16)])
        let event = g.memory.read(buffer, count: 4)
        #expect(event == [0, 0, 0, 0x80], "VIRTIO_SCSI_T_NO_EVENT | VIRTIO_SCSI_T_EVENTS_MISSED")
        // Once reported, a later event is delivered without the flag.
        let second = g.memory.allocate(16)
        let head2 = ring.addChain([.writable(second, 16)])
        ring.publish(head2)
        g.frontend.kick(1)
        h.device.post(VirtioSCSIEvent(event: VirtioSCSIEvent.paramChange, address: VirtioSCSIAddress(target: 0, lun: 0),
                                      reason: 0))
        _ = try g.waitForUsed(queue: 1)
        #expect(g.memory.read(second, count: 4) == [3, 0, 0, 0])
    }
}
