/// A log-linear latency histogram in nanoseconds (HdrHistogram-like): 64 linear buckets per
/// power of two, so any percentile is within 1/64 (1.6%) of the true value. Fixed storage,
/// allocated once; `record` is a few instructions and never allocates.
struct LatencyHistogram {
    static let subBits = 6
    static let subCount = 1 << subBits
    static let bucketCount = (64 - subBits) * subCount
    let counts: UnsafeMutablePointer<UInt64>
    private(set) var total: UInt64 = 0
    private(set) var sum: UInt64 = 0
    private(set) var minimum: UInt64 = .max
    private(set) var maximum: UInt64 = 0

    init() {
        counts = .allocate(capacity: Self.bucketCount)
        counts.initialize(repeating: 0, count: Self.bucketCount)
    }

    func deallocate() { counts.deallocate() }

    mutating func reset() {
        counts.update(repeating: 0, count: Self.bucketCount)
        total = 0; sum = 0; minimum = .max; maximum = 0
    }

    @inline(__always)
    static func index(_ value: UInt64) -> Int {
        if value < UInt64(subCount) { return Int(value) }
        let exponent = 63 - value.leadingZeroBitCount          // >= subBits
        let mantissa = Int(truncatingIfNeeded: value >> UInt64(exponent - subBits)) & (subCount - 1)
        return (exponent - subBits + 1) * subCount + mantissa
    }

    /// The smallest value of bucket `index` and its width.
    static func bounds(_ index: Int) -> (low: UInt64, width: UInt64) {
        if index < subCount { return (UInt64(index), 1) }
        let exponent = index / subCount + subBits - 1
        let mantissa = UInt64(index % subCount)
        let width = UInt64(1) << UInt64(exponent - subBits)
        return ((UInt64(1) << UInt64(exponent)) + mantissa * width, width)
    }

    @inline(__always)
    mutating func record(_ value: UInt64) {
        counts[Self.index(value)] &+= 1
        total &+= 1
        sum &+= value
        if value < minimum { minimum = value }
        if value > maximum { maximum = value }
    }

    mutating func merge(_ other: LatencyHistogram) {
        for i in 0..<Self.bucketCount { counts[i] &+= other.counts[i] }
        total &+= other.total
        sum &+= other.sum
        minimum = Swift.min(minimum, other.minimum)
        maximum = Swift.max(maximum, other.maximum)
    }

    /// The value at `percentile` (0-100): the middle of the bucket holding that rank.
    func value(atPercentile percentile: Double) -> UInt64 {
        guard total > 0 else { return 0 }
        let rank = Swift.max(UInt64(1), UInt64((percentile / 100 * Double(total)).rounded(.up)))
        var seen: UInt64 = 0
        for i in 0..<Self.bucketCount {
            seen &+= counts[i]
            if seen >= rank {
                let (low, width) = Self.bounds(i)
                return Swift.min(Swift.max(low + width / 2, minimum), maximum)
            }
        }
        return maximum
    }

    var mean: Double { total == 0 ? 0 : Double(sum) / Double(total) }
}
