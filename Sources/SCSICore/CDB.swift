/// CDB helpers (SPC-4 §4.2.5).
public enum CDB {
    /// Length of a CDB from its operation code's group (SPC-4 §4.2.5.1), or nil when the
    /// length cannot be known from the opcode alone. Group 3 holds the variable-length CDB
    /// (7Fh: 8 + additional CDB length), groups 6 and 7 are vendor specific.
    public static func length(opcode: UInt8, additionalLength: UInt8? = nil) -> Int? {
        switch opcode >> 5 {
        case 0: return 6
        case 1, 2: return 10
        case 4: return 16
        case 5: return 12
        case 3:
            guard opcode == 0x7F, let additional = additionalLength else { return nil }
            return 8 + Int(additional)
        default: return nil
        }
    }
}

/// SCSI operation codes the server looks at itself.
public enum SCSIOpcode {
    public static let testUnitReady: UInt8 = 0x00
    public static let requestSense: UInt8 = 0x03
    public static let inquiry: UInt8 = 0x12
    public static let read10: UInt8 = 0x28
    public static let write10: UInt8 = 0x2A
    public static let read16: UInt8 = 0x88
    public static let write16: UInt8 = 0x8A
    public static let reportLUNs: UInt8 = 0xA0
}
