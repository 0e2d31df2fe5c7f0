import Testing
import VhostUserProtocol

/// vhost-user message framing and payloads (vhost-user spec: "Header", "Message types",
/// "A vring address description", "Memory regions description").
@Suite struct HeaderTests {
    @Test func headerRoundTrip() {
        let header = VhostUserHeader(request: VhostUserRequest.setMemTable.rawValue,
                                     flags: [.version1, .needReply], size: 264)
        var bytes: [UInt8] = []
        header.encode(into: &bytes)
        #expect(bytes.count == VhostUserHeader.byteCount)
        // request u32, flags u32, size u32, host (little-endian) byte order.
        #expect(bytes == [5, 0, 0, 0, 0x09, 0, 0, 0, 0x08, 0x01, 0, 0])
        let decoded = bytes.withUnsafeBytes { VhostUserHeader($0) }
        #expect(decoded == header)
        #expect(decoded.validationError == nil)
    }

    @Test func decodesFromUnalignedBytes() {
        let bytes: [UInt8] = [0xFF, 2, 0, 0, 0, 0x05, 0, 0, 0, 8, 0, 0, 0]
        let header = bytes.withUnsafeBytes { VhostUserHeader(UnsafeRawBufferPointer(rebasing: $0[1...])) }
        #expect(header.request == 2)
        #expect(header.flags == [.version1, .reply])
        #expect(header.size == 8)
    }

    @Test(arguments: [UInt32(0), 2, 3])
    func badVersion(version: UInt32) {
        let header = VhostUserHeader(request: 1, flags: VhostUserHeaderFlags(rawValue: version | 0x8), size: 0)
        #expect(header.validationError == .badVersion(version))
    }

    @Test func payloadTooLarge() {
        let ok = VhostUserHeader(request: 1, flags: .version1, size: UInt32(VhostUserHeader.maxPayload))
        #expect(ok.validationError == nil)
        let big = VhostUserHeader(request: 1, flags: .version1, size: UInt32(VhostUserHeader.maxPayload) + 1)
        #expect(big.validationError == .payloadTooLarge(UInt32(VhostUserHeader.maxPayload) + 1))
        let huge = VhostUserHeader(request: 1, flags: .version1, size: .max)
        #expect(huge.validationError == .payloadTooLarge(.max))
    }

    @Test func requestCodesMatchTheSpec() {
        #expect(VhostUserRequest.getFeatures.rawValue == 1)
        #expect(VhostUserRequest.setMemTable.rawValue == 5)
        #expect(VhostUserRequest.getVringBase.rawValue == 11)
        #expect(VhostUserRequest.setVringEnable.rawValue == 18)
        #expect(VhostUserRequest.addMemReg.rawValue == 37)
        #expect(VhostUserRequest(rawValue: 999) == nil)
        #expect(VhostUserProtocolFeatures.replyAck.rawValue == 1 << 3)
        #expect(VhostUserProtocolFeatures.configureMemSlots.rawValue == 1 << 15)
    }

    @Test func errorsDescribeThemselves() {
        let errors: [VhostUserProtocolError] = [
            .badVersion(2), .payloadTooLarge(9999), .unknownRequest(77),
            .wrongPayloadSize(request: "X", expected: "8", got: 4),
            .wrongFileDescriptorCount(request: "X", expected: "1", got: 0), .invalid("why"),
        ]
        #expect(Set(errors.map(\.description)).count == errors.count)
        #expect(errors[2].description.contains("77"))
    }
}

@Suite struct PayloadTests {
    @Test func vringStateRoundTrip() {
        let state = VringState(index: 3, num: 0xFFFF)
        let bytes = state.encoded()
        #expect(bytes == [3, 0, 0, 0, 0xFF, 0xFF, 0, 0])
        #expect(VringState(decoding: bytes) == state)
    }

    @Test func vringAddressRoundTrip() {
        let a = VringAddress(index: 2, flags: VringAddress.flagLog, descriptorTable: 0x7F00_0000_1000,
                             usedRing: 0x7F00_0000_3000, availRing: 0x7F00_0000_2000, log: 0x3000)
        let bytes = a.encoded()
        #expect(bytes.count == VringAddress.byteCount)
        // Field order per the spec: index, flags, descriptor, used, available, log.
        #expect(Array(bytes[16..<24]) == [0, 0x30, 0, 0, 0, 0x7F, 0, 0])
        #expect(VringAddress(decoding: bytes) == a)
        #expect(a.alignmentError == nil)
    }

    /// virtio v1.2 §2.7: descriptor table 16-byte, avail ring 2-byte, used ring 4-byte aligned.
    @Test func vringAddressAlignment() {
        func address(desc: UInt64 = 0x1000, avail: UInt64 = 0x2000, used: UInt64 = 0x3000, flags: UInt32 = 0) -> VringAddress {
            VringAddress(index: 0, flags: flags, descriptorTable: desc, usedRing: used, availRing: avail, log: 0)
        }
        #expect(address().alignmentError == nil)
        #expect(address(desc: 0x1008).alignmentError != nil)
        #expect(address(avail: 0x2001).alignmentError != nil)
        #expect(address(avail: 0x2002).alignmentError == nil)
        #expect(address(used: 0x3002).alignmentError != nil)
        #expect(address(used: 0x3004).alignmentError == nil)
        #expect(address(flags: 2).alignmentError != nil, "unknown flag bits")
        #expect(address(flags: 1).alignmentError == nil)
    }

    static func region(_ gpa: UInt64, _ size: UInt64, user: UInt64 = 0x7F00_0000_0000, offset: UInt64 = 0) -> MemoryRegionDescription {
        MemoryRegionDescription(guestPhysicalAddress: gpa, size: size, userAddress: user, mmapOffset: offset)
    }

    @Test func memoryTableRoundTrip() throws {
        let table = MemoryTable(regions: [Self.region(0, 0xA0000), Self.region(0x100000, 0x7FF00000, user: 0x7F00_1000_0000)])
        let bytes = table.encoded()
        #expect(bytes.count == MemoryTable.payloadSize(regionCount: 2))
        #expect(Array(bytes[0..<8]) == [2, 0, 0, 0, 0, 0, 0, 0], "nregions, padding")
        #expect(try MemoryTable(decoding: bytes, fdCount: 2) == table)
    }

    /// QEMU sends the whole 8-entry array whatever nregions says.
    @Test func memoryTableAcceptsTheFullArray() throws {
        var bytes = MemoryTable(regions: [Self.region(0, 0x1000)]).encoded()
        bytes += [UInt8](repeating: 0, count: MemoryTable.payloadSize(regionCount: 8) - bytes.count)
        #expect(try MemoryTable(decoding: bytes, fdCount: 1).regions == [Self.region(0, 0x1000)])
        bytes.append(0)
        #expect(throws: VhostUserProtocolError.self) { try MemoryTable(decoding: bytes, fdCount: 1) }
    }

    @Test func memoryTableWrongFDCount() {
        let bytes = MemoryTable(regions: [Self.region(0, 0x1000), Self.region(0x1000, 0x1000)]).encoded()
        #expect(throws: VhostUserProtocolError.wrongFileDescriptorCount(request: "SET_MEM_TABLE", expected: "2", got: 1)) {
            try MemoryTable(decoding: bytes, fdCount: 1)
        }
        #expect(throws: VhostUserProtocolError.wrongFileDescriptorCount(request: "SET_MEM_TABLE", expected: "2", got: 3)) {
            try MemoryTable(decoding: bytes, fdCount: 3)
        }
    }

    @Test(arguments: [UInt32(0), 9, 0xFFFF_FFFF])
    func memoryTableRegionCountOutOfRange(count: UInt32) {
        var bytes: [UInt8] = []
        bytes.appendUnaligned(count)
        bytes.appendUnaligned(UInt32(0))
        bytes += [UInt8](repeating: 0, count: 32 * 8)
        #expect(throws: VhostUserProtocolError.self) { try MemoryTable(decoding: bytes, fdCount: Int(min(count, 8))) }
        do {
            _ = try MemoryTable(decoding: bytes, fdCount: 0)
            Issue.record("accepted \(count) regions")
        } catch {
            guard case .invalid = error else { Issue.record("unexpected \(error)"); return }
        }
    }

    @Test func memoryTableShortPayload() {
        #expect(throws: VhostUserProtocolError.wrongPayloadSize(request: "SET_MEM_TABLE", expected: ">= 8", got: 4)) {
            try MemoryTable(decoding: [1, 0, 0, 0], fdCount: 1)
        }
        // nregions = 2 but only one region's bytes.
        var bytes = MemoryTable(regions: [Self.region(0, 0x1000), Self.region(0x1000, 0x1000)]).encoded()
        bytes.removeLast(32)
        #expect(throws: VhostUserProtocolError.wrongPayloadSize(request: "SET_MEM_TABLE", expected: "72", got: 40)) {
            try MemoryTable(decoding: bytes, fdCount: 2)
        }
    }

    @Test func memoryTableOverlappingRegions() {
        let cases: [[MemoryRegionDescription]] = [
            [Self.region(0, 0x2000), Self.region(0x1000, 0x2000)],
            [Self.region(0x1000, 0x1000), Self.region(0, 0x10000)],   // contained
            [Self.region(0x1000, 0x1000), Self.region(0x1000, 0x1000)],  // identical
        ]
        for regions in cases {
            #expect(throws: VhostUserProtocolError.invalid("SET_MEM_TABLE: regions overlap")) {
                try MemoryTable(decoding: MemoryTable(regions: regions).encoded(), fdCount: regions.count)
            }
        }
        // Adjacent is fine.
        let adjacent = [Self.region(0, 0x1000), Self.region(0x1000, 0x1000)]
        #expect(throws: Never.self) { try MemoryTable(decoding: MemoryTable(regions: adjacent).encoded(), fdCount: 2) }
    }

    @Test func memoryRegionValidation() {
        #expect(Self.region(0, 0).validationError != nil, "empty")
        #expect(Self.region(0xFFFF_FFFF_FFFF_F000, 0x2000).validationError != nil, "wraps guest space")
        #expect(Self.region(0, 0x2000, user: 0xFFFF_FFFF_FFFF_F000).validationError != nil, "wraps frontend space")
        #expect(Self.region(0, 0x2000, offset: 0xFFFF_FFFF_FFFF_F000).validationError != nil, "offset wraps")
        #expect(Self.region(0, 0x2000, offset: 1 << 63).validationError != nil, "offset beyond off_t")
        // A region ending exactly at 2^64 is refused as well (its end is not representable).
        #expect(Self.region(0xFFFF_FFFF_FFFF_E000, 0x2000).validationError != nil)
        #expect(Self.region(0xFFFF_FFFF_FFFF_D000, 0x2000).validationError == nil, "ends one page below 2^64")
        for bad in [Self.region(0, 0), Self.region(0xFFFF_FFFF_FFFF_F000, 0x2000)] {
            #expect(throws: VhostUserProtocolError.self) {
                try MemoryTable(decoding: MemoryTable(regions: [bad]).encoded(), fdCount: 1)
            }
        }
    }

    @Test func singleMemoryRegion() throws {
        let r = SingleMemoryRegion(region: Self.region(0x100000, 0x200000, offset: 0x1000))
        let bytes = r.encoded()
        #expect(bytes.count == SingleMemoryRegion.byteCount)
        #expect(Array(bytes[0..<8]) == [UInt8](repeating: 0, count: 8), "u64 padding first")
        #expect(try SingleMemoryRegion(decoding: bytes, request: "ADD_MEM_REG") == r)
        #expect(throws: VhostUserProtocolError.wrongPayloadSize(request: "ADD_MEM_REG", expected: "40", got: 39)) {
            try SingleMemoryRegion(decoding: Array(bytes.dropLast()), request: "ADD_MEM_REG")
        }
        let empty = SingleMemoryRegion(region: Self.region(0, 0)).encoded()
        #expect(throws: VhostUserProtocolError.self) { try SingleMemoryRegion(decoding: empty, request: "REM_MEM_REG") }
    }

    @Test func payloadReaderReadsPackedFields() {
        var r = PayloadReader([1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0])
        #expect(r.read(UInt16.self) == 1)
        #expect(r.read(UInt32.self) == 2)
        #expect(r.remaining == 8)
        #expect(r.read(UInt64.self) == 3)
        #expect(r.remaining == 0)
    }
}
