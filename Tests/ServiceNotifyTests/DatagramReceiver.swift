import Glibc
import XCTest

/// A bound AF_UNIX datagram socket standing in for systemd's notification socket.
final class DatagramReceiver {
    let fd: Int32
    /// The NOTIFY_SOCKET value that reaches it: an absolute path or @name.
    let notifySocket: String
    private let directory: String?

    /// A socket file in a new temporary directory, or a random abstract name.
    init(abstract: Bool) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(errno) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var pathBytes: [UInt8]
        if abstract {
            let name = "vus-notify-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            notifySocket = "@" + name
            directory = nil
            pathBytes = [0] + Array(name.utf8)
        } else {
            var template = Array("/tmp/vus-notify-test.XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else { throw POSIXError(errno) }
            directory = String(cString: made)
            notifySocket = directory! + "/notify"
            pathBytes = Array(notifySocket.utf8) + [0]
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard rc == 0 else { throw POSIXError(errno) }
    }

    deinit {
        close(fd)
        if let directory {
            unlink(notifySocket)
            rmdir(directory)
        }
    }

    /// The next datagram's text, or nil when none arrives within `timeout` seconds.
    func receive(timeout: Double = 5) -> String? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, Int32(timeout * 1000)) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buffer, buffer.count, 0)
        guard n >= 0 else { return nil }
        return String(decoding: buffer.prefix(n), as: UTF8.self)
    }
}

struct POSIXError: Error, CustomStringConvertible {
    var code: Int32
    init(_ code: Int32) { self.code = code }
    var description: String { String(cString: strerror(code)) }
}
