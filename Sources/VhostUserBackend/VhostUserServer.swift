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
    private var listenFD: Int32 = -1
    private var acceptSource: DispatchSourceRead?
    private var connection: FrontendConnection?
    private var connectionCount = 0

    public init(socketPath: String, device: VhostUserDevice, options: BackendOptions = BackendOptions()) {
        self.socketPath = socketPath
        self.device = device
        self.options = options
    }

    /// Binds the socket (refusing one another server is using) and starts accepting.
    public func start() throws {
        let fd = try UnixSocket.listen(path: socketPath)
        controlQueue.sync {
            listenFD = fd
            // The listening fd is never closed before shutdown; a plain source is safe here.
            let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: controlQueue)
            source.setEventHandler { @Sendable [weak self] in self?.acceptOne() }
            acceptSource = source
            source.resume()
        }
        Log.info("listening on \(socketPath)")
    }

    /// Stops accepting, closes the current connection (finishing its in-flight I/O) and
    /// removes the socket file. Blocks until done.
    public func shutdown() {
        controlQueue.sync {
            acceptSource?.cancel()
            acceptSource = nil
            if listenFD >= 0 {
                close(listenFD)
                listenFD = -1
                unlink(socketPath)
            }
            connection?.close(reason: "server shutting down")
            connection = nil
        }
    }

    /// Whether a frontend is connected now (for tests and status).
    public var isConnected: Bool { controlQueue.sync { connection != nil } }

    /// Runs `body` on the control queue after everything queued so far (for tests).
    public func sync<T>(_ body: () -> T) -> T { controlQueue.sync(execute: body) }

    private func acceptOne() {
        let fd = accept(listenFD, nil, nil)
        guard fd >= 0 else {
            if errno != EAGAIN && errno != EINTR && errno != ECONNABORTED {
                Log.warning("accept on \(socketPath): \(String(cString: strerror(errno)))")
            }
            return
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
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
