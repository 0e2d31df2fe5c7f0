import Glibc

/// The address in `$NOTIFY_SOCKET` (sd_notify(3)): an absolute path of an AF_UNIX datagram
/// socket, or `@name` for a name in the abstract namespace (unix(7)). Other forms (newer
/// systemd's `vsock:`) are not supported: the caller then does not notify.
public struct NotifySocketAddress: Equatable, Sendable, CustomStringConvertible {
    /// The bytes of `sun_path`: the path, or a NUL byte followed by the abstract name.
    public let pathBytes: [UInt8]

    /// nil when `value` is empty, neither absolute nor abstract, or too long for `sun_path`.
    public init?(_ value: String) {
        var bytes = Array(value.utf8)
        guard let first = bytes.first, first == UInt8(ascii: "/") || first == UInt8(ascii: "@") else { return nil }
        if first == UInt8(ascii: "@") {
            guard bytes.count > 1 else { return nil }
            bytes[0] = 0
        }
        // A path needs its terminating NUL inside sun_path; an abstract name does not.
        let capacity = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - (first == UInt8(ascii: "/") ? 1 : 0)
        guard bytes.count <= capacity, !bytes.dropFirst().contains(0) else { return nil }
        pathBytes = bytes
    }

    public var isAbstract: Bool { pathBytes.first == 0 }

    public var description: String {
        isAbstract ? "@" + String(decoding: pathBytes.dropFirst(), as: UTF8.self) : String(decoding: pathBytes, as: UTF8.self)
    }

    /// Calls `body` with the sockaddr_un and the length to pass to sendto(2). For an abstract
    /// name the length counts exactly the name's bytes: trailing NULs would be part of it.
    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
        }
        let length = MemoryLayout<sa_family_t>.size + pathBytes.count + (isAbstract ? 0 : 1)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(length)) }
        }
    }
}
