import Synchronization

/// The initiator session ID (RFC 7143 §10.12.5) of the "random" format (T = 10b): 24 random
/// bits and a 16-bit qualifier. Initiator name plus ISID name the I_T nexus, so two sessions
/// of this process to one target must have different ISIDs, or the target takes the second
/// login as a reinstatement of the first and drops it.
public struct ISCSIISID: Sendable, Equatable, CustomStringConvertible {
    /// Only the low 24 bits are used.
    public var random: UInt32
    public var qualifier: UInt16

    public init(random: UInt32, qualifier: UInt16) {
        self.random = random & 0xFF_FFFF
        self.qualifier = qualifier
    }

    /// A process-wide random value with a qualifier that counts up per session: distinct within
    /// the process, and distinct from other processes with high probability.
    public static func next() -> ISCSIISID {
        ISCSIISID(random: processRandom, qualifier: UInt16(truncatingIfNeeded: counter.add(1, ordering: .relaxed).oldValue))
    }

    private static let processRandom = UInt32.random(in: 0...0xFF_FFFF)
    private static let counter = Atomic<UInt32>(0)

    /// The 6-byte ISID in hex, as targets show it (`tgtadm --mode conn --op show`).
    public var description: String {
        let bytes: [UInt8] = [0x80, UInt8(truncatingIfNeeded: random >> 16),
                              UInt8(truncatingIfNeeded: random >> 8), UInt8(truncatingIfNeeded: random),
                              UInt8(truncatingIfNeeded: qualifier >> 8), UInt8(truncatingIfNeeded: qualifier)]
        return bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}
