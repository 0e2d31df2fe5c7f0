import Glibc

/// A Unix stream socket at a path: the server's listening side and a client's connection.
public enum UnixSocket {
    /// Binds and listens at `path`. A stale socket file (nothing accepting) is removed; a live
    /// one (another server answers) is refused, as is any other kind of file.
    public static func listen(path: String) throws(SystemError) -> Int32 {
        var address = try socketAddress(path)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else {
                throw SystemError(errno: EEXIST, "\(path) exists and is not a socket")
            }
            if isLive(&address) {
                throw SystemError(errno: EADDRINUSE, "another server is listening on \(path)")
            }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError(errno: errno, "socket") }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let err = errno
            close(fd)
            throw SystemError(errno: err, "bind \(path)")
        }
        guard Glibc.listen(fd, 8) == 0 else {
            let err = errno
            close(fd)
            throw SystemError(errno: err, "listen \(path)")
        }
        return fd
    }

    /// Connects to `path` and returns the connected fd (close-on-exec), which the caller owns.
    /// A failure reads "cannot connect to PATH: REASON", fit to show a user as it is.
    public static func connect(path: String) throws(SystemError) -> Int32 {
        var address = try socketAddress(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError(errno: errno, "socket") }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            let err = errno
            close(fd)
            throw SystemError(errno: err, "cannot connect to \(path)")
        }
        return fd
    }

    private static func isLive(_ address: inout sockaddr_un) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return result == 0
    }

    private static func socketAddress(_ path: String) throws(SystemError) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else {
            throw SystemError(errno: ENAMETOOLONG, "socket path '\(path)' must be 1...\(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
        return address
    }
}
