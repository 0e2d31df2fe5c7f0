import Dispatch
import Glibc

/// A read or write source on a private duplicate of `fd`, closed by the source's cancel
/// handler (the same reason as VhostUserBackend's `makeReadSource`: libdispatch unregisters a
/// cancelled source later, by fd number, and would deafen a new fd that took the number).
/// The owner may close `fd` itself whenever it likes. Nil when `dup` fails.
func watch(_ fd: Int32, forWriting: Bool, queue: DispatchQueue,
           handler: @escaping @Sendable () -> Void) -> DispatchSourceProtocol? {
    let watched = fcntl(fd, F_DUPFD_CLOEXEC, 0)
    guard watched >= 0 else { return nil }
    let source: DispatchSourceProtocol = forWriting
        ? DispatchSource.makeWriteSource(fileDescriptor: watched, queue: queue)
        : DispatchSource.makeReadSource(fileDescriptor: watched, queue: queue)
    source.setEventHandler { @Sendable in handler() }
    source.setCancelHandler { @Sendable in _ = close(watched) }
    source.activate()
    return source
}

/// `strerror(code)`.
func errnoText(_ code: Int32) -> String { String(cString: strerror(code)) }
