import SCSICore
import Testing
import VirtioSCSI

/// virtio-scsi wire format (virtio v1.2 §5.6.6) and the answers the server gives itself.
@Suite struct AddressTests {
    static func parse(_ b: [UInt8]) -> VirtioSCSIAddress? {
        b.withUnsafeBytes { VirtioSCSIAddress(lunField: $0) }
    }

    /// §5.6.6.1: lun[0] is 1, lun[1] the target, lun[2..3] the LUN (0x40 flat-space marker).
    @Test func parsesTheLUNField() {
        #expect(Self.parse([1, 2, 0x40, 0x05, 0, 0, 0, 0]) == VirtioSCSIAddress(target: 2, lun: 5))
        #expect(Self.parse([1, 0, 0x41, 0x2C, 0, 0, 0, 0]) == VirtioSCSIAddress(target: 0, lun: 300))
        #expect(Self.parse([1, 0, 0x00, 0x07, 0, 0, 0, 0]) == VirtioSCSIAddress(target: 0, lun: 7), "peripheral form")
        #expect(Self.parse([1, 0, 0x7F, 0xFF, 0, 0, 0, 0])?.lun == 0x3FFF, "only 14 bits of LUN")
        #expect(Self.parse([1, 0, 0xC0, 0x01, 0, 0, 0, 0])?.lun == 1, "address method bits masked")
    }

    @Test(arguments: [UInt8(0), 2, 0xFF])
    func firstByteMustBeOne(first: UInt8) {
        #expect(Self.parse([first, 0, 0x40, 0, 0, 0, 0, 0]) == nil)
    }

    @Test func shortFieldIsRejected() {
        #expect(Self.parse([1, 0, 0x40, 0]) == nil)
    }

    @Test func encodesTheLUNField() {
        #expect(VirtioSCSIAddress(target: 3, lun: 300).lunField == [1, 3, 0x41, 0x2C, 0, 0, 0, 0])
        let a = VirtioSCSIAddress(target: 9, lun: 16383)
        #expect(Self.parse(a.lunField) == a)
        #expect(a.description == "9:16383")
    }
}

@Suite struct ResponseTests {
    static func encode(response: VirtioSCSIResponse, status: UInt8, residual: UInt32, sense: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0xAA, count: VirtioSCSICommandResponse.byteCount)
        sense.withUnsafeBytes { s in
            out.withUnsafeMutableBytes { VirtioSCSICommandResponse.encode(response: response, status: status, residual: residual,
                                                                          sense: s, into: $0) }
        }
        return out
    }

    /// virtio_scsi_cmd_resp: sense_len le32, residual le32, status_qualifier le16, status,
    /// response, sense[96].
    @Test func layout() {
        let sense = FixedSenseData(key: .mediumError, asc: 0x11, ascq: 0).bytes
        let b = Self.encode(response: .ok, status: 0x02, residual: 0x01020304, sense: sense)
        #expect(b.count == 108)
        #expect(Array(b[0..<4]) == [18, 0, 0, 0])
        #expect(Array(b[4..<8]) == [4, 3, 2, 1])
        #expect(Array(b[8..<10]) == [0, 0])
        #expect(b[10] == 0x02 && b[11] == 0)
        #expect(Array(b[12..<30]) == sense)
        #expect(b[30..<108].allSatisfy { $0 == 0 }, "the rest of the sense buffer is cleared")
    }

    @Test func senseIsClampedTo96Bytes() {
        let sense = (0..<200).map { UInt8(truncatingIfNeeded: $0 + 1) }
        let b = Self.encode(response: .ok, status: 0x02, residual: 0, sense: sense)
        #expect(Array(b[0..<4]) == [96, 0, 0, 0])
        #expect(Array(b[12..<108]) == Array(sense[0..<96]))
    }

    @Test func noSense() {
        let b = Self.encode(response: .badTarget, status: 0, residual: 0, sense: [])
        #expect(Array(b[0..<4]) == [0, 0, 0, 0])
        #expect(b[11] == 3)
        #expect(b[12...].allSatisfy { $0 == 0 })
    }

    @Test func responseCodesMatchTheSpec() {
        #expect(VirtioSCSIResponse.ok.rawValue == 0)
        #expect(VirtioSCSIResponse.aborted.rawValue == 2)
        #expect(VirtioSCSIResponse.badTarget.rawValue == 3)
        #expect(VirtioSCSIResponse.incorrectLUN.rawValue == 12)
        #expect(VirtioSCSICommandHeader.byteCount == 51)
        #expect(VirtioSCSICommandResponse.byteCount == 108)
    }

    @Test func commandHeaderFields() {
        var bytes: [UInt8] = [1, 0, 0x40, 1, 0, 0, 0, 0]
        bytes += [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        bytes += [2, 5, 9]
        bytes += [0x28] + [UInt8](repeating: 0, count: 31)
        let h = bytes.withUnsafeBytes { VirtioSCSICommandHeader($0) }
        #expect(h.id == 0x1122_3344_5566_7788)
        #expect(h.taskAttribute == 2 && h.priority == 5 && h.crn == 9)
        #expect(bytes[VirtioSCSICommandHeader.cdbOffset] == 0x28)
    }

    @Test func tmfRequest() {
        var bytes: [UInt8] = [0, 0, 0, 0, 5, 0, 0, 0, 1, 4, 0x40, 2, 0, 0, 0, 0]
        bytes += [42, 0, 0, 0, 0, 0, 0, 0]
        let t = bytes.withUnsafeBytes { VirtioSCSITMFRequest($0) }
        #expect(t.subtype == VirtioSCSITMFSubtype.logicalUnitReset.rawValue)
        #expect(t.address == VirtioSCSIAddress(target: 4, lun: 2))
        #expect(t.id == 42)
    }

    @Test func eventEncoding() {
        let e = VirtioSCSIEvent(event: VirtioSCSIEvent.transportReset | VirtioSCSIEvent.eventsMissed,
                                address: VirtioSCSIAddress(target: 1, lun: 2), reason: 2)
        #expect(e.encoded() == [1, 0, 0, 0x80, 1, 1, 0, 2, 0, 0, 0, 0, 2, 0, 0, 0])
    }

    /// Events carry the LUN as REPORT LUNS does (peripheral below 256, flat from 256): Linux
    /// hands bytes 2-3 to scsi_add_device / scsi_device_lookup unmasked.
    @Test func eventLUNEncoding() {
        #expect(VirtioSCSIAddress(target: 3, lun: 0).eventLUNField == [1, 3, 0, 0, 0, 0, 0, 0])
        #expect(VirtioSCSIAddress(target: 3, lun: 255).eventLUNField == [1, 3, 0, 0xFF, 0, 0, 0, 0])
        #expect(VirtioSCSIAddress(target: 3, lun: 256).eventLUNField == [1, 3, 0x41, 0, 0, 0, 0, 0])
        #expect(VirtioSCSIAddress(target: 0, lun: 16383).eventLUNField == [1, 0, 0x7F, 0xFF, 0, 0, 0, 0])
        // The same LUN, as REPORT LUNS lists it: bytes 2-3 of the event are bytes 0-1 there.
        let listed = LocalResponses.reportLUNs([300])
        #expect(Array(VirtioSCSIAddress(target: 0, lun: 300).eventLUNField[2..<4]) == Array(listed[8..<10]))
    }
}

@Suite struct LocalResponseTests {
    /// SPC-4 §6.33: 4-byte list length, 4 reserved, then 8-byte LUNs; SAM-5 §4.7 addressing.
    @Test func reportLUNsLayout() {
        let d = LocalResponses.reportLUNs([0, 5, 255, 256, 16383])
        #expect(d.count == 8 + 40)
        #expect(Array(d[0..<8]) == [0, 0, 0, 40, 0, 0, 0, 0])
        let entries = (0..<5).map { Array(d[8 + 8 * $0..<16 + 8 * $0]) }
        #expect(entries[0] == [0, 0, 0, 0, 0, 0, 0, 0])
        #expect(entries[1] == [0, 5, 0, 0, 0, 0, 0, 0], "peripheral device addressing below 256")
        #expect(entries[2] == [0, 0xFF, 0, 0, 0, 0, 0, 0])
        #expect(entries[3] == [0x41, 0x00, 0, 0, 0, 0, 0, 0], "flat addressing from 256")
        #expect(entries[4] == [0x7F, 0xFF, 0, 0, 0, 0, 0, 0])
        #expect(LocalResponses.reportLUNs([]) == [UInt8](repeating: 0, count: 8))
    }

    /// SPC-4 §6.6.2: qualifier 011b + type 1Fh = 0x7F for a LUN that is not there.
    @Test func inquiryForUnsupportedLUN() {
        let d = LocalResponses.inquiryForUnsupportedLUN(evpd: false, pageCode: 0)
        #expect(d.count == 36)
        #expect(d[0] == 0x7F)
        #expect(d[3] & 0x0F == 2, "response data format 2")
        #expect(Int(d[4]) == d.count - 5, "additional length")
        let vpd = LocalResponses.inquiryForUnsupportedLUN(evpd: true, pageCode: 0x83)
        #expect(vpd == [0x7F, 0x83, 0, 0])
    }

    @Test func allocationLength() {
        func length(_ cdb: [UInt8]) -> Int { cdb.withUnsafeBytes { LocalResponses.allocationLength(cdb: $0) } }
        #expect(length([0xA0, 0, 0, 0, 0, 0, 0x01, 0x02, 0x03, 0x04, 0, 0]) == 0x01020304)
        #expect(length([0x12, 0, 0, 0x01, 0x00, 0]) == 256)
        #expect(length([0x03, 0, 0, 0, 18, 0]) == 18)
        #expect(length([0x00, 0, 0, 0, 0, 0]) == 0)
    }

    @Test func lunMap() {
        let map = LUNMap([(VirtioSCSIAddress(target: 0, lun: 0), 3), (VirtioSCSIAddress(target: 0, lun: 300), 9),
                          (VirtioSCSIAddress(target: 2, lun: 1), 0)])
        #expect(map.count == 3)
        #expect(map.unit(at: VirtioSCSIAddress(target: 0, lun: 300)) ==
                LogicalUnit(id: 1, address: VirtioSCSIAddress(target: 0, lun: 300), backendLUN: 9))
        #expect(map.unit(at: VirtioSCSIAddress(target: 0, lun: 1)) == nil)
        #expect(map.units.map(\.id) == [0, 1, 2], "ordered by target and LUN")
        #expect(map.hasTarget(0) && map.hasTarget(2) && !map.hasTarget(1))
        #expect(map.luns(of: 0) == [0, 300])
        #expect(map.luns(of: 2) == [1])
        #expect(map.luns(of: 5) == [])
    }

    /// Units added and removed at runtime: ids are never reused, a target without units is
    /// gone, every change bumps the version.
    @Test func lunMapChanges() throws {
        var map = LUNMap([(VirtioSCSIAddress(target: 0, lun: 0), 1)])
        let a = VirtioSCSIAddress(target: 1, lun: 4)
        #expect(!map.hasTarget(1))
        let added = try map.add(address: a, backendLUN: 2)
        #expect(added.id == 1 && map.version == 1)
        #expect(map.hasTarget(1) && map.luns(of: 1) == [4])
        #expect(throws: LUNMapError.addressInUse(a)) { try map.add(address: a, backendLUN: 3) }
        #expect(try map.remove(address: a) == added)
        #expect(!map.hasTarget(1) && map.unit(at: a) == nil && map.version == 2)
        #expect(throws: LUNMapError.noSuchLUN(a)) { try map.remove(address: a) }
        #expect(try map.add(address: a, backendLUN: 2).id == 2, "a new id at the same address")
        let reserved = try map.reserveID(for: VirtioSCSIAddress(target: 0, lun: 9))
        #expect(reserved == 3 && map.unit(at: VirtioSCSIAddress(target: 0, lun: 9)) == nil)
        #expect(try map.add(address: VirtioSCSIAddress(target: 0, lun: 8), backendLUN: 0).id == 4)
        let far = VirtioSCSIAddress(target: 0, lun: 16384)
        #expect(throws: LUNMapError.lunOutOfRange(far)) { try map.add(address: far, backendLUN: 0) }
        #expect("\(LUNMapError.addressInUse(a))" == "LUN 1:4 is already configured")
    }
}

@Suite struct SCSICoreTests {
    /// SPC-4 §4.2.5.1: the group code (top 3 bits) fixes the CDB length.
    @Test func cdbLengthByGroup() {
        #expect(CDB.length(opcode: 0x00) == 6)    // TEST UNIT READY, group 0
        #expect(CDB.length(opcode: 0x12) == 6)    // INQUIRY
        #expect(CDB.length(opcode: 0x28) == 10)   // READ(10), group 1
        #expect(CDB.length(opcode: 0x5A) == 10)   // MODE SENSE(10), group 2
        #expect(CDB.length(opcode: 0x88) == 16)   // READ(16), group 4
        #expect(CDB.length(opcode: 0x9E) == 16)
        #expect(CDB.length(opcode: 0xA0) == 12)   // REPORT LUNS, group 5
        #expect(CDB.length(opcode: 0x7F, additionalLength: 0x18) == 32)  // variable length
        #expect(CDB.length(opcode: 0x7F) == nil)
        #expect(CDB.length(opcode: 0x60) == nil, "group 3 reserved")
        #expect(CDB.length(opcode: 0xC0) == nil, "vendor specific")
        #expect(CDB.length(opcode: 0xE0) == nil, "vendor specific")
    }

    /// SPC-4 §4.5.3 fixed-format sense; LOGICAL UNIT NOT SUPPORTED is ASC 25h.
    @Test func fixedSenseData() {
        let b = FixedSenseData.logicalUnitNotSupported.bytes
        #expect(b.count == 18)
        #expect(b[0] == 0x70)
        #expect(b[2] == SenseKey.illegalRequest.rawValue)
        #expect(b[7] == 10, "additional sense length")
        #expect(b[12] == 0x25 && b[13] == 0)
        #expect(FixedSenseData.invalidCommandOperationCode.bytes[12] == 0x20)
        #expect(FixedSenseData(key: .unitAttention, asc: 0x29, ascq: 0x03).bytes[13] == 0x03)
    }

    @Test func statusNames() {
        #expect(SCSIStatus.checkCondition.rawValue == 2)
        #expect(SCSIStatus.taskAborted.rawValue == 0x40)
        #expect(SCSIStatus.good.description == "GOOD")
        #expect(SCSIStatus(rawValue: 0x22).description == "status 0x22")
    }
}
