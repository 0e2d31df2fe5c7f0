import Dispatch
import Glibc
import ServerLog

/// A listening Unix stream socket that hands each accepted connection (close-on-exec) to
/// `accepted` on `queue`, and removes its socket file when closed. Used by the vhost-user
/// server and by the executable's control socket.
public final class UnixListener: @unchecked Sendable {
    // @unchecked: `fd` and `source` are confined to `queue`.
    public let path: String
    private let queue: DispatchQueue
    private var fd: Int32 = -1
    private var source: DispatchSourceRead?

    /// Binds `path` (`UnixSocket.listen`: a stale socket file is replaced, a live one refused),
    /// sets its mode to `mode` when given and starts accepting.
    public init(path: String, mode: mode_t? = nil, queue: DispatchQueue,
                accepted: @escaping @Sendable (_ fd: Int32) -> Void) throws {
        self.path = path
        self.queue = queue
        let fd = try UnixSocket.listen(path: path)
        if let mode, chmod(path, mode) != 0 {
            let error = SystemError(errno: errno, "chmod \(path)")
            Glibc.close(fd)
            unlink(path)
            throw error
        }
        queue.sync {
            self.fd = fd
            // The listening fd is closed only after the source is cancelled, in `close()`, and
            // its number is not reused while the source lives: a plain source is safe here.
            let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
            source.setEventHandler { @Sendable in
                let client = accept(fd, nil, nil)
                guard client >= 0 else {
                    if errno != EAGAIN && errno != EINTR && errno != ECONNABORTED {
                        Log.warning("accept on \(path): \(String(cString: strerror(errno)))")
                    }
                    return
                }
                _ = fcntl(client, F_SETFD, FD_CLOEXEC)
                accepted(client)
            }
            self.source = source
            source.resume()
        }
    }

    /// Stops accepting, closes the socket and removes its file. Call on `queue`.
    public func close() {
        dispatchPrecondition(condition: .onQueue(queue))
        source?.cancel()
        source = nil
        guard fd >= 0 else { return }
        Glibc.close(fd)
        fd = -1
        unlink(path)
    }
}
