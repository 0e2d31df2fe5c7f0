/// The counters of one request queue: plain integers owned by the queue's worker and changed
/// only on its serial queue, so the data path takes no lock, does no atomic operation and
/// allocates nothing. Other threads see them through `StatisticsCell` snapshots.
/// Counters wrap at 2^64 (Prometheus treats a decrease as a reset).
public struct QueueCounters: Sendable {
    @usableFromInline var requestsByKind = InlineArray<3, UInt64>(repeating: 0)
    @usableFromInline var dataIn: UInt64 = 0
    @usableFromInline var dataOut: UInt64 = 0
    @usableFromInline var failed: UInt64 = 0
    @usableFromInline var histogram = LatencyHistogram()

    public init() {}

    /// Requests answered of `kind`.
    public func requests(_ kind: SCSICommandKind) -> UInt64 { requestsByKind[kind.rawValue] }

    public var totalRequests: UInt64 { requestsByKind[0] &+ requestsByKind[1] &+ requestsByKind[2] }

    /// Data-in bytes returned to the guest: the target's, and the few the server answers
    /// itself (REPORT LUNS, INQUIRY of an unconfigured LUN).
    public var bytesRead: UInt64 { dataIn }

    /// Data-out bytes the target took from the guest.
    public var bytesWritten: UInt64 { dataOut }

    /// Requests answered with a virtio response other than VIRTIO_SCSI_S_OK, with a SCSI status
    /// other than GOOD or CONDITION MET (CHECK CONDITION, BUSY, RESERVATION CONFLICT, TASK SET
    /// FULL...), or refused outright.
    public var errors: UInt64 { failed }

    /// Latency from submission to the target until its completion, of every command that
    /// went to the target (locally answered requests are not timed).
    public var latency: LatencyHistogram { histogram }

    /// A request answered with a response header.
    @inlinable @inline(__always)
    public mutating func recordAnswer(opcode: UInt8, responseOK: Bool, status: UInt8, bytesRead read: Int, bytesWritten written: Int) {
        requestsByKind[SCSICommandKind(opcode: opcode).rawValue] &+= 1
        dataIn &+= UInt64(truncatingIfNeeded: read)
        dataOut &+= UInt64(truncatingIfNeeded: written)
        if !responseOK || (status != 0x00 && status != 0x04) { failed &+= 1 }
    }

    /// A request refused before it could be answered (bad chain, headers too short): the
    /// guest gets used length 0.
    @inlinable @inline(__always)
    public mutating func recordRefused() {
        requestsByKind[SCSICommandKind.other.rawValue] &+= 1
        failed &+= 1
    }

    @inlinable @inline(__always)
    public mutating func recordLatency(nanoseconds: UInt64) {
        histogram.record(nanoseconds: nanoseconds)
    }

    /// Adds another queue's counters.
    public mutating func add(_ other: QueueCounters) {
        for i in 0..<3 { requestsByKind[i] &+= other.requestsByKind[i] }
        dataIn &+= other.dataIn
        dataOut &+= other.dataOut
        failed &+= other.failed
        histogram.add(other.histogram)
    }
}
