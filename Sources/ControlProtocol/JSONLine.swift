import Glibc

extension JSONValue {
    /// Writes this value as one line of the control protocol (compact JSON and `\n`) to the
    /// stream socket `fd`, all of it, retrying short writes and EINTR; false when the peer is
    /// gone (errno tells why). Never raises SIGPIPE. Shared by the server and the client.
    public func writeLine(to fd: Int32) -> Bool {
        let bytes = Array((serialized() + "\n").utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            offset += n
        }
        return true
    }
}
