import Dispatch
import Glibc

/// A read source on a private duplicate of `fd`, closed by the source's cancel handler.
///
/// libdispatch unregisters a cancelled source asynchronously and by fd number. If the
/// owner closed the fd right after `cancel()` and the number was reused at once (a new kick
/// eventfd after GET_VRING_BASE, the next frontend's socket), the late unregistration would
/// silently deafen the new source. Watching a duplicate keeps the number taken until
/// libdispatch has let go of it, so the owner may close its own fd whenever it likes.
func makeReadSource(watching fd: Int32, queue: DispatchQueue,
                    handler: @escaping @Sendable (_ watchedFD: Int32) -> Void) throws(SystemError) -> DispatchSourceRead {
    let watched = fcntl(fd, F_DUPFD_CLOEXEC, 0)
    guard watched >= 0 else { throw SystemError(errno: errno, "dup") }
    let source = DispatchSource.makeReadSource(fileDescriptor: watched, queue: queue)
    source.setEventHandler { @Sendable in handler(watched) }
    source.setCancelHandler { @Sendable in _ = close(watched) }
    return source
}
