import Dispatch
import Testing
import VhostUserProtocol
import VirtioCore
import VirtioSCSI
import VirtioTestSupport

/// A guest that posts hostile descriptor chains on a request queue of the real server. Each
/// row documents the outcome: the request fails alone — used length 0 when the chain itself
/// is unusable (the device cannot even find where to write a response), or a virtio-scsi
/// failure response when the chain is fine but the request is not — and a good request on
/// the same ring right after is served. Rows that break the ring itself (the avail index,
/// a head out of range) are documented separately below.
@Suite struct HostileGuestTests {
    static let responseBytes = VirtioSCSICommandResponse.byteCount
    static let headerBytes = VirtioSCSICommandHeader.byteCount

    enum Expected: Equatable {
        /// Used element with length 0: the chain was refused.
        case refused
        /// A response header with this virtio-scsi response code (used length 108).
        case response(VirtioSCSIResponse)
    }

    enum Row: String, CaseIterable, CustomTestStringConvertible {
        case loop
        case nextOutOfRange
        case headerOutsideMemory
        case bufferStraddlesRegionEndIntoUnmapped
        case hugeDataInLength
        case totalLengthAbove4GiB
        case nestedIndirectTable
        case indirectTableLengthNotMultipleOf16
        case indirectTableEmpty
        case indirectWithNextFlag
        case indirectTableOutsideMemory
        case indirectTableLongerThanLimit
        case headerShorterThanRequestHeader
        case responseShorterThanResponseHeader
        case readableAfterWritable
        case lunFieldNotAddressingATarget
        case unknownTarget
        case bidirectional

        var testDescription: String { rawValue }

        var expected: Expected {
            switch self {
            case .lunFieldNotAddressingATarget, .unknownTarget: return .response(.badTarget)
            // Data-out and data-in in one request need VIRTIO_SCSI_F_INOUT, never offered.
            case .bidirectional: return .response(.failure)
            default: return .refused
            }
        }
    }

    static func header(target: UInt8 = 0, lun: UInt16 = 0, cdb: [UInt8] = CDBs.testUnitReady) -> [UInt8] {
        GuestDriver.requestHeader(lun: GuestDriver.lunField(target: target, lun: lun), id: 7, cdb: cdb)
    }

    /// Builds the row's chain on ring `ring` and returns its head and the response address.
    static func post(_ row: Row, _ g: GuestDriver) -> (UInt16, UInt64) {
        let m = g.memory
        let ring = g.rings[2]
        let resp = m.allocate(responseBytes)
        m.fill(resp, count: responseBytes, with: 0xEE)
        let good = m.allocate(copying: header())
        func chain(_ buffers: [MockBuffer]) -> UInt16 { ring.addChain(buffers) }
        func indirect(_ table: UInt64, length: UInt32, flags: DescriptorFlags = .indirect) -> UInt16 {
            let head = ring.allocateDescriptor()
            ring.writeDescriptor(head, MockDescriptor(address: table, length: length, flags: flags))
            return head
        }
        let head: UInt16
        switch row {
        case .loop:
            let a = ring.allocateDescriptor(), b = ring.allocateDescriptor()
            ring.writeDescriptor(a, MockDescriptor(address: good, length: UInt32(headerBytes), flags: .next, next: b))
            ring.writeDescriptor(b, MockDescriptor(address: resp, length: UInt32(responseBytes), flags: [.next, .write], next: a))
            head = a
        case .nextOutOfRange:
            let a = ring.allocateDescriptor()
            ring.writeDescriptor(a, MockDescriptor(address: good, length: UInt32(headerBytes), flags: .next, next: 500))
            head = a
        case .headerOutsideMemory:
            head = chain([.readable(0x8000_0000, headerBytes), .writable(resp, responseBytes)])
        case .bufferStraddlesRegionEndIntoUnmapped:
            // Region 0 is [0, 4 MiB); nothing is mapped right after it.
            head = chain([.readable(good, headerBytes), .writable((4 << 20) - 50, responseBytes)])
        case .hugeDataInLength:
            head = chain([.readable(good, headerBytes), .writable(resp, responseBytes),
                          MockBuffer(address: 0x1_0000_0000, length: 0xFFFF_FF00, writable: true)])
        case .totalLengthAbove4GiB:
            head = chain([.readable(good, headerBytes), .writable(resp, responseBytes),
                          MockBuffer(address: 0x1_0000_0000, length: 0xFFFF_FFFF, writable: true),
                          MockBuffer(address: 0x1_0000_0000, length: 0xFFFF_FFFF, writable: true)])
        case .nestedIndirectTable:
            let inner = ring.writeIndirectTable([MockDescriptor(address: good, length: UInt32(headerBytes))])
            let outer = ring.writeIndirectTable([MockDescriptor(address: inner, length: 16, flags: .indirect)])
            head = indirect(outer, length: 16)
        case .indirectTableLengthNotMultipleOf16:
            let table = ring.writeIndirectTable([
                MockDescriptor(address: good, length: UInt32(headerBytes), flags: .next, next: 1),
                MockDescriptor(address: resp, length: UInt32(responseBytes), flags: .write)])
            head = indirect(table, length: 24)
        case .indirectTableEmpty:
            head = indirect(m.allocate(16), length: 0)
        case .indirectWithNextFlag:
            let table = ring.writeIndirectTable([MockDescriptor(address: good, length: UInt32(headerBytes))])
            head = indirect(table, length: 16, flags: [.indirect, .next])
        case .indirectTableOutsideMemory:
            head = indirect(0x9000_0000, length: 32)
        case .indirectTableLongerThanLimit:
            // 1025 entries: over the 1024-descriptor limit of one chain.
            let entries = (0..<1025).map { i in
                MockDescriptor(address: good, length: 1, flags: .next, next: UInt16(i + 1))
            }
            head = indirect(ring.writeIndirectTable(entries), length: 16 * 1025)
        case .headerShorterThanRequestHeader:
            head = chain([.readable(good, 20), .writable(resp, responseBytes)])
        case .responseShorterThanResponseHeader:
            head = chain([.readable(good, headerBytes), .writable(resp, 50)])
        case .readableAfterWritable:
            head = chain([.writable(resp, responseBytes), .readable(good, headerBytes)])
        case .lunFieldNotAddressingATarget:
            var h = header()
            h[0] = 2
            head = chain([.readable(m.allocate(copying: h), headerBytes), .writable(resp, responseBytes)])
        case .unknownTarget:
            head = chain([.readable(m.allocate(copying: header(target: 5)), headerBytes), .writable(resp, responseBytes)])
        case .bidirectional:
            head = chain([.readable(m.allocate(copying: header(cdb: CDBs.write10(lba: 0, blocks: 1))), headerBytes),
                          .readable(m.allocate(512), 512), .writable(resp, responseBytes), .writable(m.allocate(512), 512)])
        }
        ring.publish(head)
        g.frontend.kick(2)
        return (head, resp)
    }

    @Test(arguments: Row.allCases)
    func hostileChainFailsAlone(_ row: Row) throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let (head, resp) = Self.post(row, g)
        let used = try g.waitForUsed()
        #expect(used.map(\.id) == [UInt32(head)])
        switch row.expected {
        case .refused:
            #expect(used.first?.length == 0, "a refused chain is completed with used length 0")
            #expect(g.memory.read(resp, count: Self.responseBytes) == [UInt8](repeating: 0xEE, count: Self.responseBytes),
                    "nothing written for a refused chain")
        case .response(let code):
            #expect(used.first?.length == UInt32(Self.responseBytes))
            #expect(CommandResponse(g.memory.read(resp, count: Self.responseBytes)).response == code.rawValue)
        }
        #expect(h.backend.commands.isEmpty, "no command reached the target")
        // The same ring goes on serving good requests.
        let data = pattern(512, seed: 5)
        let (_, _, w) = try g.execute(cdb: CDBs.write10(lba: 3, blocks: 1), dataOut: data)
        #expect(w.response == 0 && w.status == 0)
        let (r, _, rr) = try g.execute(cdb: CDBs.read10(lba: 3, blocks: 1), dataIn: 512)
        #expect(rr.response == 0 && g.dataIn(of: r) == data)
    }

    // MARK: - Broken rings

    enum RingBreaker: String, CaseIterable, CustomTestStringConvertible {
        /// avail->idx moves more than the ring size past the device's position.
        case availIndexJump
        /// An avail ring entry names a head >= the ring size.
        case headIndexOutOfRange

        var testDescription: String { rawValue }
    }

    /// A guest that breaks the ring itself: the documented outcome is that the server logs
    /// it and ignores that ring (no request on it is served any more, none is answered, no
    /// memory outside the guest's is touched) until the frontend restarts it; the other rings
    /// and the server go on; GET_VRING_BASE still answers, and a new connection works.
    @Test(arguments: RingBreaker.allCases)
    func brokenRingIsIgnoredAndTheServerSurvives(_ breaker: RingBreaker) throws {
        let h = try ServerHarness()
        defer { h.stop() }
        do {
            let g = try h.connectGuest()
            _ = try g.execute(cdb: CDBs.testUnitReady)
            let ring = g.rings[2]
            switch breaker {
            case .availIndexJump:
                ring.setAvailIndex(ring.availIndex &+ ring.size &+ 5)
            case .headIndexOutOfRange:
                ring.publish(ring.size + 3)
            }
            g.frontend.kick(2)
            // A good request after it is not served: the ring is ignored.
            let later = g.post(cdb: CDBs.testUnitReady)
            #expect(throws: (any Error).self) { _ = try g.waitForUsed(timeout: 0.5) }
            #expect(g.response(of: later).response == 0xEE)
            // The control queue still works.
            let (_, tmf) = g.postTMF(subtype: .queryTaskSet)
            _ = try g.waitForUsed(queue: 0)
            #expect(g.memory.read(tmf, count: 1) == [VirtioSCSIResponse.functionComplete.rawValue])
            // GET_VRING_BASE answers (nothing in flight) with where the device stopped.
            let start = monotonicSeconds()
            _ = try g.frontend.getVringBase(2)
            #expect(monotonicSeconds() - start < 1)
            g.frontend.disconnect()
        }
        #expect(h.waitDisconnected())
        try HostileFrontendTests.freshConnectionServes(h)
    }

    /// When the guest breaks a request ring while a command taken from it is in flight, the
    /// ring stops taking requests but the command still completes and drains, so
    /// GET_VRING_BASE answers at once instead of waiting for the drain timeout (found by the
    /// scsi-request fuzz target).
    @Test func brokenRingWithACommandInFlightDrainsPromptly() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let ring = g.rings[2]
        // One good READ and, in the same batch, a head out of range.
        let header = g.memory.allocate(copying: GuestDriver.requestHeader(lun: GuestDriver.lunField(target: 0, lun: 0),
                                                                          id: 1, cdb: CDBs.read10(lba: 0, blocks: 1)))
        let resp = g.memory.allocate(Self.responseBytes)
        let data = g.memory.allocate(512)
        let good = ring.addChain([.readable(header, Self.headerBytes), .writable(resp, Self.responseBytes),
                                  .writable(data, 512)])
        ring.publish([good, ring.size + 1])
        g.frontend.kick(2)
        #expect(h.backend.waitForCommands(1))
        let start = monotonicSeconds()
        _ = try g.frontend.getVringBase(2)
        let elapsed = monotonicSeconds() - start
        #expect(elapsed < 1, "GET_VRING_BASE took \(elapsed) s")
        // The request taken before the ring broke is still answered.
        #expect(ring.usedIndex == 1)
    }
}
