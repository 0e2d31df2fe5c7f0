import Dispatch
import Glibc

/// The start of an HTTP/1.x request: its request line (RFC 9112 §3).
struct HTTPRequestLine: Equatable {
    var method: String
    /// The request target without its query.
    var path: String

    /// Parses the head of a request (everything before the empty line); nil when it is not
    /// `METHOD TARGET HTTP/1.x`.
    init?(head: [UInt8]) {
        let firstLine = head.split(separator: UInt8(ascii: "\n"), maxSplits: 1, omittingEmptySubsequences: false).first ?? []
        let text = String(decoding: firstLine, as: UTF8.self)
        let parts = text.hasSuffix("\r") ? text.dropLast().split(separator: " ", omittingEmptySubsequences: false)
                                         : text.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[1].hasPrefix("/"), parts[2].hasPrefix("HTTP/1.") else { return nil }
        method = String(parts[0])
        path = String(parts[1].prefix { $0 != "?" })
    }

    /// Length of the head including the empty line that ends it, once `bytes` holds it.
    static func headLength(in bytes: [UInt8]) -> Int? {
        var index = 0
        while let newline = bytes[index...].firstIndex(of: UInt8(ascii: "\n")) {
            let next = newline + 1
            if next < bytes.count, bytes[next] == UInt8(ascii: "\n") { return next + 1 }
            if next + 1 < bytes.count, bytes[next] == UInt8(ascii: "\r"), bytes[next + 1] == UInt8(ascii: "\n") { return next + 2 }
            index = next
        }
        return nil
    }
}

/// One client connection: read the request head, write one response, close. Non-blocking,
/// on the exporter's queue (to which it is confined), with a deadline for the whole exchange,
/// so a slow or silent client costs one fd and a timer, never a thread.
final class HTTPConnection: @unchecked Sendable {
    static let maxHeadBytes = 8192

    private let fd: Int32
    private let queue: DispatchQueue
    private let respond: (HTTPRequestLine?, _ tooLarge: Bool) -> [UInt8]
    private let closed: (HTTPConnection) -> Void
    private var received: [UInt8] = []
    private var response: [UInt8] = []
    private var written = 0
    private var reader: DispatchSourceProtocol?
    private var writer: DispatchSourceProtocol?
    private var deadline: DispatchSourceTimer?
    private var isClosed = false

    /// `respond` makes the whole response (head and body) for a parsed request line, nil when
    /// the request is malformed; `closed` is told when the connection is gone.
    init(fd: Int32, queue: DispatchQueue, timeout: DispatchTimeInterval,
         respond: @escaping (HTTPRequestLine?, _ tooLarge: Bool) -> [UInt8],
         closed: @escaping (HTTPConnection) -> Void) {
        self.fd = fd
        self.queue = queue
        self.respond = respond
        self.closed = closed
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + timeout)
        timer.setEventHandler { [weak self] in self?.close() }
        timer.activate()
        deadline = timer
    }

    /// Starts reading. On the queue.
    func start() {
        reader = watch(fd, forWriting: false, queue: queue) { [weak self] in self?.readAvailable() }
        if reader == nil { close() }
    }

    private func readAvailable() {
        guard !isClosed, response.isEmpty else { return }
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 {
                received += chunk[0..<n]
                let headLength = HTTPRequestLine.headLength(in: received)
                if let headLength, headLength <= Self.maxHeadBytes {
                    send(respond(HTTPRequestLine(head: Array(received[0..<headLength])), false))
                    return
                }
                if received.count > Self.maxHeadBytes {
                    send(respond(nil, true))
                    return
                }
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
            close()  // end of stream before a whole request, or an error
            return
        }
    }

    private func send(_ bytes: [UInt8]) {
        reader?.cancel()
        reader = nil
        response = bytes
        writeAvailable()
    }

    private func writeAvailable() {
        guard !isClosed else { return }
        while written < response.count {
            let n = response.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + written, $0.count - written, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if n > 0 {
                written += n
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                if writer == nil {
                    writer = watch(fd, forWriting: true, queue: queue) { [weak self] in self?.writeAvailable() }
                    if writer == nil { close() }
                }
                return
            }
            break  // the client went away
        }
        close()
    }

    /// Ends the connection (idempotent): sources cancelled, what the client sent and we did
    /// not read is discarded (closing over unread bytes would reset the connection and could
    /// cost the client our response), the response flushed with a FIN.
    func close() {
        guard !isClosed else { return }
        isClosed = true
        reader?.cancel()
        writer?.cancel()
        deadline?.cancel()
        reader = nil
        writer = nil
        deadline = nil
        var scratch = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<16 {
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n <= 0 { break }
        }
        shutdown(fd, Int32(SHUT_WR))
        _ = Glibc.close(fd)
        closed(self)
    }
}
