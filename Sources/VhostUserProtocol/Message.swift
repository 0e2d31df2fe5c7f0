/// The 12-byte message header; fields are in host byte order, unaligned payloads follow.
public struct VhostUserHeader: Sendable, Equatable {
    public static let byteCount = 12
    /// Payloads larger than this are refused; the largest one we accept is SET_MEM_TABLE (264).
    public static let maxPayload = 4096
    /// SCM_RIGHTS limit of the protocol (VHOST_MEMORY_BASELINE_NREGIONS).
    public static let maxFileDescriptors = 8

    public var request: UInt32
    public var flags: VhostUserHeaderFlags
    public var size: UInt32

    public init(request: UInt32, flags: VhostUserHeaderFlags, size: UInt32) {
        self.request = request
        self.flags = flags
        self.size = size
    }

    public init(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count >= Self.byteCount)
        request = bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)
        flags = VhostUserHeaderFlags(rawValue: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        size = bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
    }

    public func encode(into bytes: inout [UInt8]) {
        bytes.appendUnaligned(request)
        bytes.appendUnaligned(flags.rawValue)
        bytes.appendUnaligned(size)
    }

    /// Syntax checks that need no context: version 1 and a payload we are willing to read.
    public var validationError: VhostUserProtocolError? {
        if flags.rawValue & VhostUserHeaderFlags.versionMask != 1 {
            return .badVersion(flags.rawValue & VhostUserHeaderFlags.versionMask)
        }
        if size > Self.maxPayload { return .payloadTooLarge(size) }
        return nil
    }
}

/// Errors that mean the frontend broke the protocol; the message is refused.
public enum VhostUserProtocolError: Error, Equatable, CustomStringConvertible {
    case badVersion(UInt32)
    case payloadTooLarge(UInt32)
    case unknownRequest(UInt32)
    case wrongPayloadSize(request: String, expected: String, got: Int)
    case wrongFileDescriptorCount(request: String, expected: String, got: Int)
    case invalid(String)

    public var description: String {
        switch self {
        case .badVersion(let v): return "unsupported protocol version \(v)"
        case .payloadTooLarge(let s): return "payload of \(s) bytes is larger than any valid message"
        case .unknownRequest(let r): return "unknown request \(r)"
        case .wrongPayloadSize(let r, let e, let g): return "\(r): payload is \(g) bytes, expected \(e)"
        case .wrongFileDescriptorCount(let r, let e, let g): return "\(r): \(g) file descriptors, expected \(e)"
        case .invalid(let why): return why
        }
    }
}

extension Array where Element == UInt8 {
    @inline(__always)
    public mutating func appendUnaligned<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value) { append(contentsOf: $0) }
    }
}

/// A little cursor over a payload that reads fields at byte offsets (payloads are packed).
public struct PayloadReader {
    let bytes: [UInt8]
    public private(set) var offset = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }

    public mutating func read<T: FixedWidthInteger>(_: T.Type = T.self) -> T {
        precondition(offset + MemoryLayout<T>.size <= bytes.count, "caller checks the payload size first")
        let value = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
        offset += MemoryLayout<T>.size
        return value
    }
}
