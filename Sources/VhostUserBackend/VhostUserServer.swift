import Dispatch
import Glibc
import ServerLog

/// Listens on a Unix socket and serves one frontend connection at a time. When a frontend
/// goes away its rings are stopped (in-flight I/O finished) and its memory unmapped, and the
/// next connection is accepted; the server itself never exits because a frontend left.
public final class VhostUserServer: @unchecked Sendable {
    // @unchecked: mutable state is confined to `controlQueue`.
    public let socketPath: String
    let device: VhostUserDevice
    let options: BackendOptions
    let controlQueue = DispatchQueue(label: "vhost-user.control")
    private var listener: UnixListener?
    private var connection: FrontendConnection?
    private var connectionCount = 0

    public init(socketPath: String, device: VhostUserDevice, options: BackendOptions = BackendOptions()) {
        self.socketPath = socketPath
        self.device = device
        self.options = options
    }

    /// Binds the socket (refusing one another server is using) and starts accepting.
    public func start() throws {
        let listener = try UnixListener(path: socketPath, queue: controlQueue) { [weak self] fd in
            guard let self else { _ = close(fd); return }
            self.serve(fd)
        }
        controlQueue.sync { self.listener = listener }
        Log.info("listening on \(socketPath)")
    }

    /// Stops accepting, closes the current connection (finishing its in-flight I/O) and
    /// removes the socket file. Blocks until done.
    public func shutdown() {
        controlQueue.sync {
            listener?.close()
            listener = nil
            connection?.close(reason: "server shutting down")
            connection = nil
        }
    }

    /// Tags every log line written on the connection's queue (vhost-user messages, ring
    /// starts and stops) with `metadata` (`Log.queueContext`).
    public func setLogContext(_ metadata: LogMetadata) {
        controlQueue.setSpecific(key: Log.queueContext, value: metadata)
    }

    /// Whether a frontend is connected now (for tests and status).
    public var isConnected: Bool { controlQueue.sync { connection != nil } }

    /// Runs `body` on the control queue after everything queued so far (for tests).
    public func sync<T>(_ body: () -> T) -> T { controlQueue.sync(execute: body) }

    /// A frontend connected (on `controlQueue`).
    private func serve(_ fd: Int32) {
        guard connection == nil else {
            Log.warning("refusing a second frontend connection while one is being served")
            close(fd)
            return
        }
        connectionCount += 1
        let number = connectionCount
        Log.info("frontend connected (connection \(number))")
        let newConnection = FrontendConnection(fd: fd, device: device, controlQueue: controlQueue, options: options) {
            [weak self] in
            self?.connection = nil
            self?.device.frontendDisconnected()
            Log.info("connection \(number) cleaned up; waiting for the next frontend")
        }
        connection = newConnection
        newConnection.start()
    }
}
