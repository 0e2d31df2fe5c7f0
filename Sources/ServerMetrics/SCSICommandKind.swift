/// How a request is counted: by its CDB's operation code (SBC-4 §5).
public enum SCSICommandKind: Int, Sendable, CaseIterable {
    /// READ (6), (10), (12), (16).
    case read
    /// WRITE (6), (10), (12), (16) and WRITE AND VERIFY (10), (12), (16).
    case write
    /// Everything else: TEST UNIT READY, INQUIRY, SYNCHRONIZE CACHE, UNMAP, ..., and requests
    /// refused before their CDB was read.
    case other

    @inlinable @inline(__always)
    public init(opcode: UInt8) {
        switch opcode {
        case 0x08, 0x28, 0xA8, 0x88: self = .read
        case 0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E: self = .write
        default: self = .other
        }
    }

    /// The `kind` label value.
    public var name: String {
        switch self {
        case .read: return "read"
        case .write: return "write"
        case .other: return "other"
        }
    }
}
