/// Request latencies in fixed, log-spaced buckets: bucket `i` counts latencies in
/// (16 µs · 2^(i-1), 16 µs · 2^i], from 16 µs up to 8.39 s, and a last bucket counts the
/// rest (+Inf). Recording is a division by a constant, a leading-zero count and three adds:
/// no search, no allocation (the counts are inline), no lock (the owner is confined to a queue).
public struct LatencyHistogram: Sendable {
    /// Finite buckets; one more counts everything above the last bound.
    public static let finiteBucketCount = 20
    public static let bucketCount = finiteBucketCount + 1
    /// Upper bound of bucket 0.
    public static let firstBoundNanoseconds: UInt64 = 16_000

    @usableFromInline var storage = InlineArray<21, UInt64>(repeating: 0)
    @usableFromInline var total: UInt64 = 0
    @usableFromInline var sum: UInt64 = 0

    public init() {}

    /// Per-bucket counts (not cumulative); the last is the +Inf bucket.
    public var counts: InlineArray<21, UInt64> { storage }
    public var count: UInt64 { total }
    public var sumNanoseconds: UInt64 { sum }

    /// Upper bound (inclusive) of bucket `index` in nanoseconds; nil for the +Inf bucket.
    public static func upperBoundNanoseconds(_ index: Int) -> UInt64? {
        index < finiteBucketCount ? firstBoundNanoseconds << UInt64(index) : nil
    }

    /// The bucket a latency falls in.
    @inlinable @inline(__always)
    public static func bucket(nanoseconds: UInt64) -> Int {
        // The smallest i with ns <= 16000 · 2^i is the bit width of (ns - 1) / 16000.
        let quotient = nanoseconds > 0 ? (nanoseconds &- 1) / 16_000 : 0
        return min(UInt64.bitWidth &- quotient.leadingZeroBitCount, 20)
    }

    @inlinable @inline(__always)
    public mutating func record(nanoseconds: UInt64) {
        storage[Self.bucket(nanoseconds: nanoseconds)] &+= 1
        total &+= 1
        sum &+= nanoseconds
    }

    /// Number of latencies at most `upperBoundNanoseconds(index)`: Prometheus's `_bucket`.
    public func cumulativeCount(throughBucket index: Int) -> UInt64 {
        var running: UInt64 = 0
        for i in 0...index { running &+= storage[i] }
        return running
    }

    /// Adds another histogram's counts (summing queues).
    public mutating func add(_ other: LatencyHistogram) {
        for i in 0..<Self.bucketCount { storage[i] &+= other.storage[i] }
        total &+= other.total
        sum &+= other.sum
    }
}
