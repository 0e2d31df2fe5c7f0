import Glibc

/// CLOCK_MONOTONIC in nanoseconds: a vDSO call (no system call), about 20 ns, with the
/// resolution latency needs (CLOCK_MONOTONIC_COARSE ticks only every few milliseconds).
public enum MonotonicClock {
    @inlinable @inline(__always)
    public static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }
}
