/// SCSI status codes (SAM-5 §5.3.1).
public struct SCSIStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let good = SCSIStatus(rawValue: 0x00)
    public static let checkCondition = SCSIStatus(rawValue: 0x02)
    public static let conditionMet = SCSIStatus(rawValue: 0x04)
    public static let busy = SCSIStatus(rawValue: 0x08)
    public static let reservationConflict = SCSIStatus(rawValue: 0x18)
    public static let taskSetFull = SCSIStatus(rawValue: 0x28)
    public static let acaActive = SCSIStatus(rawValue: 0x30)
    public static let taskAborted = SCSIStatus(rawValue: 0x40)

    public var description: String {
        switch self {
        case .good: return "GOOD"
        case .checkCondition: return "CHECK CONDITION"
        case .conditionMet: return "CONDITION MET"
        case .busy: return "BUSY"
        case .reservationConflict: return "RESERVATION CONFLICT"
        case .taskSetFull: return "TASK SET FULL"
        case .acaActive: return "ACA ACTIVE"
        case .taskAborted: return "TASK ABORTED"
        default: return "status 0x" + String(rawValue, radix: 16)
        }
    }
}

/// Sense keys (SPC-4 §4.5.6).
public enum SenseKey: UInt8, Sendable {
    case noSense = 0x0, recoveredError = 0x1, notReady = 0x2, mediumError = 0x3
    case hardwareError = 0x4, illegalRequest = 0x5, unitAttention = 0x6, dataProtect = 0x7
    case abortedCommand = 0xB
}

/// Builds fixed-format sense data (SPC-4 §4.5.3), 18 bytes.
public struct FixedSenseData: Equatable, Sendable {
    public var key: SenseKey
    public var asc: UInt8
    public var ascq: UInt8

    public init(key: SenseKey, asc: UInt8, ascq: UInt8) {
        self.key = key
        self.asc = asc
        self.ascq = ascq
    }

    /// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (ASC 25h, SPC-4 Annex D).
    public static let logicalUnitNotSupported = FixedSenseData(key: .illegalRequest, asc: 0x25, ascq: 0)
    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (ASC 20h).
    public static let invalidCommandOperationCode = FixedSenseData(key: .illegalRequest, asc: 0x20, ascq: 0)
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB (ASC 24h).
    public static let invalidFieldInCDB = FixedSenseData(key: .illegalRequest, asc: 0x24, ascq: 0)

    public static let byteCount = 18

    public var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.byteCount)
        b[0] = 0x70          // current error, fixed format
        b[2] = key.rawValue
        b[7] = UInt8(Self.byteCount - 8)  // additional sense length
        b[12] = asc
        b[13] = ascq
        return b
    }
}
