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

/// Closes an fd we own, ignoring EINTR (Linux closes the fd anyway; see close(2)).
@inlinable @inline(__always)
public func closeOwned(_ fd: Int32) {
    if fd >= 0 { _ = Glibc.close(fd) }
}
