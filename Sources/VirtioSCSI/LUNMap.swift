import SCSICore

/// Which guest addresses (target, LUN) are backed by which configured logical unit, and
/// that unit's LUN number at the backend (the iSCSI target's LUN).
public struct LUNMap: Sendable {
    public private(set) var entries: [VirtioSCSIAddress: Int] = [:]
    private let backendLUNs: [UInt16]

    /// `units[i]` is the guest address and backend LUN of configured unit `i`.
    public init(_ units: [(address: VirtioSCSIAddress, backendLUN: UInt16)]) {
        for (index, unit) in units.enumerated() { entries[unit.address] = index }
        backendLUNs = units.map(\.backendLUN)
    }

    public var count: Int { backendLUNs.count }

    public func backendLUN(_ index: Int) -> UInt16 { backendLUNs[index] }

    public func backendIndex(for address: VirtioSCSIAddress) -> Int? { entries[address] }

    public func hasTarget(_ target: UInt8) -> Bool { entries.keys.contains { $0.target == target } }

    /// The LUNs configured on `target`, ascending.
    public func luns(of target: UInt8) -> [UInt16] {
        entries.keys.filter { $0.target == target }.map(\.lun).sorted()
    }
}

/// Answers the commands the server answers itself, from the configuration.
public enum LocalResponses {
    /// REPORT LUNS parameter data (SPC-4 §6.33): a header and one 8-byte LUN per entry, in
    /// single-level peripheral (LUN < 256) or flat (LUN < 16384) addressing (SAM-5 §4.7).
    public static func reportLUNs(_ luns: [UInt16]) -> [UInt8] {
        var data = [UInt8](repeating: 0, count: 8 + 8 * luns.count)
        let listLength = UInt32(8 * luns.count)
        data[0] = UInt8(listLength >> 24)
        data[1] = UInt8((listLength >> 16) & 0xFF)
        data[2] = UInt8((listLength >> 8) & 0xFF)
        data[3] = UInt8(listLength & 0xFF)
        for (i, lun) in luns.enumerated() {
            data[8 + 8 * i] = lun < 256 ? 0 : UInt8(0x40 | (lun >> 8))
            data[8 + 8 * i + 1] = UInt8(lun & 0xFF)
        }
        return data
    }

    /// Standard INQUIRY data for a LUN that is not configured (SPC-4 §6.6.2): peripheral
    /// qualifier 011b ("not capable of supporting a device"), device type 1Fh.
    public static func inquiryForUnsupportedLUN(evpd: Bool, pageCode: UInt8) -> [UInt8] {
        if evpd { return [0x7F, pageCode, 0, 0] }
        var data = [UInt8](repeating: 0x20, count: 36)  // spaces for the ASCII fields
        data[0] = 0x7F
        data[1] = 0
        data[2] = 0x06       // SPC-4
        data[3] = 0x02       // response data format 2
        data[4] = 31         // additional length
        data[5] = 0; data[6] = 0; data[7] = 0
        return data
    }

    /// The allocation length field of a CDB (big-endian), for the commands answered locally.
    public static func allocationLength(cdb: UnsafeRawBufferPointer) -> Int {
        switch cdb[0] {
        case SCSIOpcode.reportLUNs:   // bytes 6-9
            return Int(cdb[6]) << 24 | Int(cdb[7]) << 16 | Int(cdb[8]) << 8 | Int(cdb[9])
        case SCSIOpcode.inquiry:      // bytes 3-4
            return Int(cdb[3]) << 8 | Int(cdb[4])
        case SCSIOpcode.requestSense: // byte 4
            return Int(cdb[4])
        default:
            return 0
        }
    }
}
