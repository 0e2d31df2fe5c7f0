import Glibc

/// A failed system call: the errno and what we were doing.
public struct SystemError: Error, CustomStringConvertible {
    public var errno: Int32
    public var operation: String

    public init(errno: Int32, _ operation: String) {
        self.errno = errno
        self.operation = operation
    }

    public var description: String { "\(operation): \(String(cString: strerror(errno)))" }
}

/// Retries `body` while it fails with EINTR; returns its result or throws the errno.
@inlinable @inline(__always)
public func retryingInterrupts<T: FixedWidthInteger>(_ operation: @autoclosure () -> String,
                                                     _ body: () -> T) throws(SystemError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let err = Glibc.errno
        if err == EINTR { continue }
        throw SystemError(errno: err, operation())
    }
}

/// Closes an fd we own, ignoring EINTR (Linux closes the fd anyway; see close(2)).
@inlinable @inline(__always)
public func closeOwned(_ fd: Int32) {
    if fd >= 0 { _ = Glibc.close(fd) }
}
