import Glibc
import Testing
import VhostUserBackend
import VhostUserProtocol
import VirtioCore
import VirtioSCSI
import VirtioTestSupport

/// A frontend that breaks the vhost-user protocol, one way per row, against the real server.
/// Each row documents the outcome the server must give (DESIGN "Errors, by policy"): an
/// error ack (u64 != 0; REPLY_ACK was negotiated and the message had NEED_REPLY) when the
/// message was well-formed but cannot be honoured — the connection then goes on — or the
/// connection dropped when the frontend cannot be trusted to go on (framing, sizes, fds,
/// features never offered). Some out-of-order messages are legal and simply accepted. After
/// every row the server must serve a fresh connection: full negotiation and one I/O.
@Suite struct HostileFrontendTests {
    enum Expected: Equatable {
        /// Error ack; the same connection still answers.
        case nack
        /// The server closes the connection.
        case disconnect
        /// Accepted (ack 0), harmless.
        case ack
        /// Answered with a reply payload of this many bytes.
        case reply(Int)
    }

    enum Row: String, CaseIterable, CustomTestStringConvertible {
        case u64PayloadTooShort
        case vringStatePayloadTooShort
        case vringAddressPayloadTooLong
        case memTableTruncated
        case memTableTooFewFDs
        case memTableTooManyFDs
        case moreThanEightFDs
        case fdWithRequestThatTakesNone
        case kickWithoutFDAndWithoutNoFDFlag
        case kickReservedBits
        case ringIndexOutOfRange
        case vringNumNotPowerOfTwo
        case vringNumWhileRunning
        case vringBaseAbove65535
        case vringAddressMisaligned
        case ringOutsideMemory
        case regionsOverlap
        case regionWrapsAddressSpace
        case regionLongerThanMemfd
        case mmapOffsetPastEndOfMemfd
        case addMemRegOverlapping
        case remMemRegOfRunningRing
        case remMemRegUnknown
        case kickBeforeMemTable
        case getVringBaseOfNeverStartedRing
        case protocolFeatureNeverOffered
        case requestOfFeatureNeverOffered
        case statusNotAByte
        case unknownRequest
        case badVersion
        case payloadLargerThan4096
        case truncatedMessage

        var testDescription: String { rawValue }

        /// The documented outcome.
        var expected: Expected {
            switch self {
            // Framing, payload sizes and fd counts: the stream cannot be trusted; drop it.
            case .u64PayloadTooShort, .vringStatePayloadTooShort, .vringAddressPayloadTooLong, .memTableTruncated,
                 .memTableTooFewFDs, .memTableTooManyFDs, .moreThanEightFDs, .fdWithRequestThatTakesNone,
                 .kickWithoutFDAndWithoutNoFDFlag, .kickReservedBits, .unknownRequest, .badVersion,
                 .payloadLargerThan4096, .truncatedMessage, .requestOfFeatureNeverOffered:
                return .disconnect
            // A memory table that is malformed (overlap, wrap-around) is a decoding error: drop.
            case .regionsOverlap, .regionWrapsAddressSpace:
                return .disconnect
            // A ring that cannot be started (its addresses lie outside guest memory) when the
            // kick fd arrives: the server drops the connection (documented in FrontendConnection).
            case .ringOutsideMemory:
                return .disconnect
            // Well-formed requests that cannot be honoured: refused, the connection goes on.
            case .ringIndexOutOfRange, .vringNumNotPowerOfTwo, .vringNumWhileRunning, .vringBaseAbove65535,
                 .vringAddressMisaligned, .regionLongerThanMemfd, .mmapOffsetPastEndOfMemfd, .addMemRegOverlapping,
                 .remMemRegOfRunningRing, .remMemRegUnknown, .protocolFeatureNeverOffered, .statusNotAByte:
                return .nack
            // Legal orderings: accepted.
            case .kickBeforeMemTable:
                return .ack
            case .getVringBaseOfNeverStartedRing:
                return .reply(VringState.byteCount)
            }
        }

        /// Rows that need a guest with running rings first.
        var needsRunningGuest: Bool {
            switch self {
            case .vringNumWhileRunning, .remMemRegOfRunningRing, .addMemRegOverlapping: return true
            default: return false
            }
        }
    }

    static let needReply: VhostUserHeaderFlags = [.version1, .needReply]

    /// Sends the row's message(s) on `f` (negotiated with REPLY_ACK) and returns the request
    /// code whose answer decides the row, and whether that answer is an ack.
    static func send(_ row: Row, _ f: FakeFrontend, guest: GuestDriver?) throws -> (UInt32, Bool) {
        let memory = try guest?.memory ?? TestGuestMemory(regions: [(0, 1 << 20), (0x10_0000, 1 << 20)])
        func raw(_ r: VhostUserRequest, _ payload: [UInt8], fds: [Int32] = []) throws -> (UInt32, Bool) {
            try f.sendRaw(request: r.rawValue, flags: needReply, payload: payload, fds: fds)
            return (r.rawValue, true)
        }
        func region(_ gpa: UInt64, _ size: UInt64, user: UInt64 = 0x7000_0000_0000, offset: UInt64 = 0) -> MemoryRegionDescription {
            MemoryRegionDescription(guestPhysicalAddress: gpa, size: size, userAddress: user, mmapOffset: offset)
        }
        switch row {
        case .u64PayloadTooShort:
            return try raw(.setFeatures, [1, 0, 0, 0])
        case .vringStatePayloadTooShort:
            return try raw(.setVringNum, [2, 0, 0, 0])
        case .vringAddressPayloadTooLong:
            return try raw(.setVringAddr, [UInt8](repeating: 0, count: VringAddress.byteCount + 1))
        case .memTableTruncated:
            var payload = memory.memoryTable.encoded()
            payload.removeLast(8)
            return try raw(.setMemTable, payload, fds: memory.fileDescriptors)
        case .memTableTooFewFDs:
            return try raw(.setMemTable, memory.memoryTable.encoded(), fds: [memory.fileDescriptors[0]])
        case .memTableTooManyFDs:
            return try raw(.setMemTable, memory.memoryTable.encoded(), fds: memory.fileDescriptors + memory.fileDescriptors)
        case .moreThanEightFDs:
            let fds = Array(repeating: memory.fileDescriptors[0], count: 9)
            return try raw(.setMemTable, memory.memoryTable.encoded(), fds: fds)
        case .fdWithRequestThatTakesNone:
            return try raw(.setVringNum, VringState(index: 2, num: 8).encoded(), fds: [memory.fileDescriptors[0]])
        case .kickWithoutFDAndWithoutNoFDFlag:
            return try raw(.setVringKick, FakeFrontend.u64(2))
        case .kickReservedBits:
            let fd = try FakeFrontend.makeEventFD()
            defer { close(fd) }
            return try raw(.setVringKick, FakeFrontend.u64(0x1_0000_0002), fds: [fd])
        case .ringIndexOutOfRange:
            return try raw(.setVringNum, VringState(index: 99, num: 128).encoded())
        case .vringNumNotPowerOfTwo:
            return try raw(.setVringNum, VringState(index: 2, num: 100).encoded())
        case .vringNumWhileRunning:
            return try raw(.setVringNum, VringState(index: 2, num: 64).encoded())
        case .vringBaseAbove65535:
            return try raw(.setVringBase, VringState(index: 2, num: 70000).encoded())
        case .vringAddressMisaligned:
            return try raw(.setVringAddr, VringAddress(index: 2, flags: 0, descriptorTable: 0x7000_0000_0008, usedRing: 0,
                                                       availRing: 0, log: 0).encoded())
        case .ringOutsideMemory:
            try f.setMemTable(memory)
            try f.setVringNum(2, 8)
            try f.setVringAddr(VringAddress(index: 2, flags: 0, descriptorTable: 0x10, usedRing: 0x1000, availRing: 0x800,
                                            log: 0))
            try f.setVringEnable(2, true)
            let fd = try FakeFrontend.makeEventFD()
            defer { close(fd) }
            return try raw(.setVringKick, FakeFrontend.u64(2), fds: [fd])
        case .regionsOverlap:
            let table = MemoryTable(regions: [region(0, 1 << 20), region(0x8_0000, 1 << 20, user: 0x7100_0000_0000)])
            return try raw(.setMemTable, table.encoded(), fds: memory.fileDescriptors)
        case .regionWrapsAddressSpace:
            let table = MemoryTable(regions: [region(UInt64.max - 0xFFF, 0x2000)])
            return try raw(.setMemTable, table.encoded(), fds: [memory.fileDescriptors[0]])
        case .regionLongerThanMemfd:
            // The memfd has 1 MiB; touching a mapping past its end would raise SIGBUS.
            let table = MemoryTable(regions: [region(0, 2 << 20)])
            return try raw(.setMemTable, table.encoded(), fds: [memory.fileDescriptors[0]])
        case .mmapOffsetPastEndOfMemfd:
            let table = MemoryTable(regions: [region(0, 1 << 20, offset: 4096)])
            return try raw(.setMemTable, table.encoded(), fds: [memory.fileDescriptors[0]])
        case .addMemRegOverlapping:
            // Guest memory region 0 is at guest address 0: a second region there overlaps it.
            let extra = try TestGuestMemory(size: 1 << 20, guestAddress: 0x1000)
            return try raw(.addMemReg, SingleMemoryRegion(region: extra.memoryTable.regions[0]).encoded(),
                           fds: extra.fileDescriptors)
        case .remMemRegOfRunningRing:
            // The rings live in region 0 (guest address 0).
            return try raw(.remMemReg, SingleMemoryRegion(region: memory.memoryTable.regions[0]).encoded())
        case .remMemRegUnknown:
            return try raw(.remMemReg, SingleMemoryRegion(region: region(0x40_0000_0000, 4096)).encoded())
        case .kickBeforeMemTable:
            let fd = try FakeFrontend.makeEventFD()
            defer { close(fd) }
            return try raw(.setVringKick, FakeFrontend.u64(2), fds: [fd])
        case .getVringBaseOfNeverStartedRing:
            try f.sendRaw(request: VhostUserRequest.getVringBase.rawValue, payload: VringState(index: 2, num: 0).encoded())
            return (VhostUserRequest.getVringBase.rawValue, false)
        case .protocolFeatureNeverOffered:
            return try raw(.setProtocolFeatures, FakeFrontend.u64(VhostUserProtocolFeatures([.replyAck, .backendReq]).rawValue))
        case .requestOfFeatureNeverOffered:
            return try raw(.getConfig, [UInt8](repeating: 0, count: 12))
        case .statusNotAByte:
            return try raw(.setStatus, FakeFrontend.u64(0x100))
        case .unknownRequest:
            try f.sendRaw(request: 999, flags: needReply, payload: FakeFrontend.u64(0))
            return (999, true)
        case .badVersion:
            try f.sendRaw(request: VhostUserRequest.getFeatures.rawValue, flags: VhostUserHeaderFlags(rawValue: 2))
            return (VhostUserRequest.getFeatures.rawValue, false)
        case .payloadLargerThan4096:
            // A header announcing 5000 bytes, followed by them.
            try f.sendRaw(request: VhostUserRequest.setMemTable.rawValue, flags: needReply,
                          payload: [UInt8](repeating: 0, count: 5000))
            return (VhostUserRequest.setMemTable.rawValue, true)
        case .truncatedMessage:
            // Only half a header, then the frontend stops sending: the connection must not
            // hang the server; closing our side must be noticed.
            guard let fd = f.socketFD else { throw FakeFrontend.Error.disconnected }
            let half: [UInt8] = [2, 0, 0, 0, 9, 0]
            _ = half.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            shutdown(fd, Int32(SHUT_WR))
            return (VhostUserRequest.setFeatures.rawValue, true)
        }
    }

    @Test(arguments: Row.allCases)
    func hostileFrontendMessage(_ row: Row) throws {
        let h = try ServerHarness()
        defer { h.stop() }
        do {
            let guest = row.needsRunningGuest ? try h.connectGuest() : nil
            let f = try guest?.frontend ?? FakeFrontend(socketPath: h.socketPath)
            if guest == nil { try f.negotiate() }
            #expect(f.replyAck)
            let (code, isAck) = try Self.send(row, f, guest: guest)
            let outcome = try f.awaitOutcome(of: code, expectAck: isAck)
            switch (row.expected, outcome) {
            case (.nack, .ack(let value)):
                #expect(value != 0, "an error ack")
                #expect(try f.getQueueNum() == 3, "the connection goes on after an error ack")
            case (.ack, .ack(let value)):
                #expect(value == 0)
                #expect(try f.getQueueNum() == 3)
            case (.reply(let size), .reply(let bytes)):
                #expect(bytes.count == size)
                #expect(try f.getQueueNum() == 3)
            case (.disconnect, .disconnected):
                break
            default:
                Issue.record("\(row): expected \(row.expected), got \(outcome)")
            }
            if row == .remMemRegOfRunningRing || row == .addMemRegOverlapping || row == .vringNumWhileRunning,
               let guest {
                // Refused without disturbing the running rings: I/O still works on this connection.
                let (_, _, resp) = try guest.execute(cdb: CDBs.testUnitReady)
                #expect(resp.response == 0)
            }
            f.disconnect()
        }
        #expect(h.waitDisconnected(), "the server cleaned up the first connection")
        try Self.freshConnectionServes(h)
    }

    /// Full negotiation and a write + read-back on a new connection.
    static func freshConnectionServes(_ h: ServerHarness) throws {
        let g = try h.connectGuest()
        let data = pattern(512, seed: 77)
        let (_, _, w) = try g.execute(cdb: CDBs.write10(lba: 12, blocks: 1), dataOut: data)
        #expect(w.response == 0 && w.status == 0)
        let (r, _, resp) = try g.execute(cdb: CDBs.read10(lba: 12, blocks: 1), dataIn: 512)
        #expect(resp.response == 0 && g.dataIn(of: r) == data)
    }
}
