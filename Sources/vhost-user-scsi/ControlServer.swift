import ControlProtocol
import Dispatch
import Glibc
import ServerLog
import VhostUserBackend

/// The control socket (Docs/CONTROL.md): a Unix stream socket, mode 0600, speaking one JSON
/// object per line each way. Every connection has its own serial queue, so a slow command (a
/// LUN probe waits for its target) holds up only the client that sent it; the data path never
/// sees this code.
final class ControlServer: @unchecked Sendable {
    // @unchecked: `listener` and `clients` are confined to `queue`.
    static let maxClients = 16
    static let maxLineBytes = 64 * 1024

    let path: String
    private let handler: @Sendable (JSONValue) -> JSONValue
    private let queue = DispatchQueue(label: "control-socket")
    private var listener: UnixListener?
    private var clients = 0

    /// `handler` turns a request into its response; it runs on the client's queue.
    init(path: String, handler: @escaping @Sendable (JSONValue) -> JSONValue) {
        self.path = path
        self.handler = handler
    }

    func start() throws {
        // Whoever can connect can add and remove disks: owner only.
        let listener = try UnixListener(path: path, mode: 0o600, queue: queue) { [weak self] fd in
            guard let self else { _ = close(fd); return }
            self.serve(fd)
        }
        queue.sync { self.listener = listener }
        Log.info("control socket on \(path)")
    }

    func shutdown() {
        queue.sync {
            listener?.close()
            listener = nil
        }
    }

    /// A client connected (on `queue`).
    private func serve(_ fd: Int32) {
        guard clients < Self.maxClients else {
            _ = JSONValue.object(["ok": .bool(false), "error": .string("too many control connections")]).writeLine(to: fd)
            close(fd)
            return
        }
        clients += 1
        ControlClient(fd: fd, handler: handler) { [weak self] in
            guard let self else { return }
            self.queue.async { self.clients -= 1 }
        }.start()
    }
}

/// One control connection: reads lines, answers each in order, closes on EOF, on a line over
/// the limit or on a write error.
private final class ControlClient: @unchecked Sendable {
    // @unchecked: confined to `queue`.
    private let fd: Int32
    private let handler: @Sendable (JSONValue) -> JSONValue
    private let finished: @Sendable () -> Void
    private let queue = DispatchQueue(label: "control-client")
    private var source: DispatchSourceRead?
    private var pending: [UInt8] = []

    init(fd: Int32, handler: @escaping @Sendable (JSONValue) -> JSONValue, finished: @escaping @Sendable () -> Void) {
        self.fd = fd
        self.handler = handler
        self.finished = finished
    }

    func start() {
        queue.async { [self] in
            let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
            source.setEventHandler { @Sendable [self] in readAvailable() }
            // The fd is closed only once libdispatch has let go of it.
            source.setCancelHandler { @Sendable [self] in
                close(fd)
                finished()
            }
            self.source = source
            source.resume()
        }
    }

    private func readAvailable() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
        guard n > 0 else { return end() }
        pending += buffer[0..<n]
        while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
            let line = pending[..<newline]
            pending.removeSubrange(...newline)
            guard !line.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") }) else { continue }
            let response: JSONValue
            do {
                response = handler(try JSONValue.parse(line))
            } catch {
                response = .object(["ok": .bool(false), "error": .string("request is \(error)")])
            }
            guard response.writeLine(to: fd) else { return end() }
        }
        if pending.count > ControlServer.maxLineBytes {
            _ = JSONValue.object(["ok": .bool(false), "error": .string("request line longer than \(ControlServer.maxLineBytes) bytes")])
                .writeLine(to: fd)
            end()
        }
    }

    private func end() {
        source?.cancel()
        source = nil
    }
}
