import Glibc

/// Errors raised by the driver side (load generator and tests), never by the server.
public enum DriverError: Error, CustomStringConvertible, Equatable {
    case system(String, Int32)
    case timeout(String)
    case protocolError(String)

    public var description: String {
        switch self {
        case .system(let what, let err): return "\(what): \(String(cString: strerror(err)))"
        case .timeout(let what): return "timed out: \(what)"
        case .protocolError(let what): return what
        }
    }
}

/// Seconds on the monotonic clock.
@inline(__always)
public func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

/// Nanoseconds on the monotonic clock (vDSO, no system call).
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
}

/// Polls `condition` every millisecond until it holds or `timeout` seconds pass.
/// Returns whether it held. A bounded wait, for state that has no notification of its own.
public func waitUntil(timeout: Double = 5, _ condition: () -> Bool) -> Bool {
    let start = monotonicSeconds()
    while true {
        if condition() { return true }
        if monotonicSeconds() - start >= timeout { return condition() }
        usleep(1000)
    }
}
