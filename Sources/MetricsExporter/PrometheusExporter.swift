import Dispatch
import Glibc
import ServerLog
import ServerMetrics

/// Serves `GET /metrics` in the Prometheus text format (`PrometheusText`) on an IPv4 TCP
/// address, for every controller of the process.
///
/// It runs on a serial queue of its own and never touches a ring's queue: each scrape reads
/// the snapshots the request queues publish (`MetricsSource`), under their short locks.
/// Clients are served one request per connection (`Connection: close`), non-blocking, each
/// within `timeout`; at most `maxConnections` at once (more are closed at once). Other paths
/// get 404, other methods than GET and HEAD 405, malformed requests 400.
public final class PrometheusExporter: @unchecked Sendable {
    // @unchecked: mutable state is confined to `queue`.
    public static let defaultHost = "127.0.0.1"
    public static let maxConnections = 16
    public static let timeout = DispatchTimeInterval.seconds(5)

    /// The address it listens on; the port is the real one when 0 was asked for.
    public let address: ListenAddress
    private let sources: @Sendable () -> [MetricsSource]
    private let queue = DispatchQueue(label: "metrics-exporter")
    private let listenFD: Int32
    private var acceptSource: DispatchSourceProtocol?
    private var acceptPaused = false
    private var connections: [ObjectIdentifier: HTTPConnection] = [:]
    private var stopped = false

    /// Listens on `host:port` and serves the controllers `sources` returns at each scrape
    /// (a closure, so controllers may come and go).
    public static func start(host: String = defaultHost, port: UInt16,
                             sources: @escaping @Sendable () -> [MetricsSource]) throws(MetricsExporterError) -> PrometheusExporter {
        let exporter = try PrometheusExporter(address: ListenAddress(host: host, port: port), sources: sources)
        Log.info("metrics: serving http://\(exporter.address)/metrics")
        return exporter
    }

    /// Listens on `host:port` and serves a fixed list of controllers.
    public static func start(host: String = defaultHost, port: UInt16,
                             sources: [MetricsSource]) throws(MetricsExporterError) -> PrometheusExporter {
        try start(host: host, port: port) { sources }
    }

    private init(address requested: ListenAddress, sources: @escaping @Sendable () -> [MetricsSource]) throws(MetricsExporterError) {
        guard let ip = requested.ipv4 else {
            throw MetricsExporterError("metrics: '\(requested.host)' is not an IPv4 address")
        }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw MetricsExporterError("metrics: socket: \(errnoText(errno))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = requested.port.bigEndian
        sin.sin_addr = ip
        let bound = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            let code = errno
            close(fd)
            throw MetricsExporterError("metrics: cannot listen on \(requested): \(errnoText(code))")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        address = ListenAddress(host: requested.host, port: UInt16(bigEndian: sin.sin_port))
        listenFD = fd
        self.sources = sources
        let source = watch(fd, forWriting: false, queue: queue) { [weak self] in self?.acceptClients() }
        guard let source else {
            close(fd)
            throw MetricsExporterError("metrics: cannot watch the listening socket: \(errnoText(errno))")
        }
        queue.sync { acceptSource = source }
    }

    /// Stops listening and closes every client connection. Not on the exporter's queue.
    public func stop() {
        dispatchPrecondition(condition: .notOnQueue(queue))
        queue.sync {
            guard !stopped else { return }
            stopped = true
            if acceptPaused { acceptSource?.resume() }
            acceptSource?.cancel()
            acceptSource = nil
            close(listenFD)
            for connection in Array(connections.values) { connection.close() }
        }
    }

    // MARK: - On the queue

    private func acceptClients() {
        while !stopped {
            // accept4 is not in Glibc's Swift module: set the flags right after.
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                switch errno {
                case EINTR, ECONNABORTED: continue
                case EAGAIN, EWOULDBLOCK: return
                default:
                    // Out of fds (EMFILE...): the pending client stays queued and the source
                    // would fire again at once; pause accepting for a second instead of spinning.
                    Log.warning("metrics: accept: \(errnoText(errno)); pausing for a second")
                    pauseAccepting()
                    return
                }
            }
            guard connections.count < Self.maxConnections else {
                close(fd)  // nothing watches it yet: closing at once is safe
                continue
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            let connection = HTTPConnection(fd: fd, queue: queue, timeout: Self.timeout,
                                            respond: { [weak self] line, tooLarge in
                                                self?.response(to: line, tooLarge: tooLarge)
                                                    ?? Self.response(503, "Service Unavailable", body: "stopped\n")
                                            },
                                            closed: { [weak self] in self?.connections[ObjectIdentifier($0)] = nil })
            connections[ObjectIdentifier(connection)] = connection
            connection.start()
        }
    }

    private func pauseAccepting() {
        guard let acceptSource, !acceptPaused else { return }
        acceptSource.suspend()
        acceptPaused = true
        queue.asyncAfter(deadline: .now() + 1) { [weak self] in
            guard let self, self.acceptPaused, !self.stopped else { return }
            self.acceptPaused = false
            self.acceptSource?.resume()
        }
    }

    /// The whole response to a request line (nil: malformed).
    func response(to line: HTTPRequestLine?, tooLarge: Bool) -> [UInt8] {
        if tooLarge { return Self.response(431, "Request Header Fields Too Large", body: "request head too large\n") }
        guard let line else { return Self.response(400, "Bad Request", body: "not an HTTP/1.x request\n") }
        guard line.method == "GET" || line.method == "HEAD" else {
            return Self.response(405, "Method Not Allowed", body: "only GET and HEAD\n", extraHeaders: "Allow: GET, HEAD\r\n")
        }
        guard line.path == "/metrics" else {
            return Self.response(404, "Not Found", body: "not found: metrics are at /metrics\n")
        }
        let body = PrometheusText.render(sources().map { ($0.controller, $0.statistics()) })
        return Self.response(200, "OK", body: body, contentType: PrometheusText.contentType, headOnly: line.method == "HEAD")
    }

    static func response(_ code: Int, _ reason: String, body: String, contentType: String = "text/plain; charset=utf-8",
                         extraHeaders: String = "", headOnly: Bool = false) -> [UInt8] {
        let head = "HTTP/1.1 \(code) \(reason)\r\nContent-Type: \(contentType)\r\n\(extraHeaders)"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
        var bytes = Array(head.utf8)
        if !headOnly { bytes += body.utf8 }
        return bytes
    }
}
