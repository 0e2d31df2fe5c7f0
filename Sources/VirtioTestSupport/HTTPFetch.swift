import Glibc

/// One HTTP response as a test reads it.
public struct HTTPResponse {
    public var status: Int
    public var headers: [String: String]
    public var body: String
}

/// A minimal HTTP/1.1 client for tests: sends `request` (or a GET of `path`) to
/// 127.0.0.1:`port` and reads until the server closes, at most `timeout` seconds.
public enum HTTPFetch {
    public static func get(port: UInt16, path: String, timeout: Int = 5) throws -> HTTPResponse {
        try send(port: port, request: "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n", timeout: timeout)
    }

    public static func send(port: UInt16, request: String, timeout: Int = 5) throws -> HTTPResponse {
        let fd = try connect(port: port, timeout: timeout)
        defer { close(fd) }
        var bytes = Array(request.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestSupportError.system("send", errno) }
            offset += n
        }
        let raw = try readToEnd(fd)
        guard let split = raw.firstRange(of: "\r\n\r\n") else {
            throw TestSupportError.protocolError("no HTTP head in \(raw.count) bytes: \(raw.prefix(200))")
        }
        let headLines = raw[..<split.lowerBound].split(separator: "\r\n")
        let statusParts = headLines.first?.split(separator: " ") ?? []
        guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]) else {
            throw TestSupportError.protocolError("bad status line \(headLines.first ?? "")")
        }
        var headers: [String: String] = [:]
        for line in headLines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingPrefix(" ").description
        }
        return HTTPResponse(status: status, headers: headers, body: String(raw[split.upperBound...]))
    }

    /// A connected TCP socket to 127.0.0.1:`port` with receive and send timeouts.
    public static func connect(port: UInt16, timeout: Int = 5) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError.system("socket", errno) }
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        sin.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let rc = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let code = errno
            close(fd)
            throw TestSupportError.system("connect 127.0.0.1:\(port)", code)
        }
        return fd
    }

    /// Everything until the peer closes; throws on a timeout.
    public static func readToEnd(_ fd: Int32) throws -> String {
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                data += chunk[0..<n]
            } else if n == 0 {
                return String(decoding: data, as: UTF8.self)
            } else if errno != EINTR {
                throw TestSupportError.system("recv after \(data.count) bytes", errno)
            }
        }
    }
}
