import Dispatch
import EventPoller
import Glibc
internal import CLibISCSI
import ServerLog

/// What watches one socket of libiscsi's: the session's `FDPoller` when it has one (handlers
/// run inline on the poller's thread), else a pair of Dispatch sources.
///
/// The Dispatch sources watch a duplicate of libiscsi's fd that only the sources' cancel handler closes.
/// libiscsi closes its own fd whenever it likes (reconnect, destroy), and libdispatch
/// unregisters a cancelled source later, by fd number: had the number been reused meanwhile
/// (by another session, an accepted vhost-user connection, a kick eventfd), that source
/// would silently stop firing. The duplicate keeps the number taken until libdispatch has
/// let go of it.
struct EventSources {
    /// libiscsi's fd, to notice when it changes.
    let fd: Int32
    /// The socket's inode: a reconnect can reuse the fd number for a new socket.
    let inode: UInt64
    let watch: Watch
    /// Whether writability is watched (for sources: whether `write` is resumed; a suspended
    /// source must be resumed before it is released).
    var writeArmed = false

    enum Watch {
        /// `watchedFD` is the duplicate the sources watch.
        case sources(watchedFD: Int32, read: DispatchSourceRead, write: DispatchSourceWrite)
        /// The poller watches its own duplicate and closes it on `unregister`.
        case poller(FDPoller, FDPoller.Registration)
    }
}

extension ISCSISession {
    static let serviceInterval = DispatchTimeInterval.seconds(1)

    func startEvents() {
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + Self.serviceInterval, repeating: Self.serviceInterval,
                       leeway: .milliseconds(100))
        timer.setEventHandler { @Sendable [weak self] in self?.timerFired() }
        timer.resume()
        self.timer = timer
        followSocket()
    }

    func stopEvents() {
        timer?.cancel()
        timer = nil
        removeSources(followingSocket: false)
    }

    /// Writes libiscsi's queued PDUs now, if there are any. Call once after a batch of
    /// `submit`s; without it they are written when the current turn of the queue ends.
    public func flush() {
        flushScheduled = false
        guard let ctx = context, !closed, libiscsiDepth == 0 else { return }
        guard iscsi_which_events(ctx) & Int32(POLLOUT) != 0 else { return }
        let corked = iscsi_out_queue_length(ctx) > 1 && setCork(ctx, true)
        service(Int32(POLLOUT))
        if corked, context == ctx { _ = setCork(ctx, false) }
    }

    /// libiscsi writes each queued PDU with a send of its own, and with TCP_NODELAY each send
    /// is a TCP segment that goes through the stack (on loopback, the receiver's side too, on
    /// this thread). Corked, a batch of PDUs leaves as one segment when the cork is pulled.
    private func setCork(_ ctx: OpaquePointer, _ on: Bool) -> Bool {
        var value: Int32 = on ? 1 : 0
        return setsockopt(iscsi_get_fd(ctx), Int32(IPPROTO_TCP), TCP_CORK, &value, socklen_t(MemoryLayout<Int32>.size)) == 0
    }

    /// Makes sure queued output gets written at the end of this turn of the queue.
    @inline(__always)
    func scheduleFlush() {
        // Inside `service`, its epilogue writes; otherwise one async flush per turn.
        guard !flushScheduled, libiscsiDepth == 0 else { return }
        flushScheduled = true
        // Handling a poller event: flush when its batch ends, without waking a worker thread.
        if case .poller(let poller, let registration)? = events?.watch, poller.requestAfterDelivery(registration) {
            return
        }
        queue.async { @Sendable [weak self] in
            guard let self, self.flushScheduled else { return }
            self.flush()
        }
    }

    /// Lets libiscsi handle `revents`, then writes what the callbacks queued (a completion
    /// often submits the next command) and re-arms the sources.
    func service(_ revents: Int32) {
        guard let ctx = context, !closed else { return }
        if let attempt, !attempt.connected, attempt.result == nil, let reason = connectFailure(ctx) {
            // Read before libiscsi consumes it: libiscsi would report only that it cannot reconnect.
            attempt.result = .failed(reason)
            handleRecoveryEvents()
            if context != nil { followSocket() }
            return
        }
        servicing = true
        defer {
            servicing = false
            if completedInBatch {
                completedInBatch = false
                completionSink?.scsiCompletionBatchEnded()
            }
        }
        var rc = withLibiscsi { iscsi_service(ctx, revents) }
        guard !closed else { return }
        // Recovery may have replaced the context meanwhile (its sources follow below).
        if context == ctx, rc >= 0, revents & Int32(POLLOUT) == 0, iscsi_which_events(ctx) & Int32(POLLOUT) != 0 {
            // The socket is almost always writable: try now, the write source only if it is not.
            rc = withLibiscsi { iscsi_service(ctx, Int32(POLLOUT)) }
            guard !closed else { return }
        }
        if rc < 0, context == ctx { serviceFailed(ctx) }
        if context != nil { followSocket() }
    }

    /// `iscsi_service` failed: the connection is lost, or a reconnect attempt failed.
    func serviceFailed(_ ctx: OpaquePointer) {
        let reason = failureReason(ctx)
        if linkUp {
            connectionLost(reason)
        } else if let attempt, attempt.result == nil {
            attempt.result = .failed(reason)
            handleRecoveryEvents()
        }
    }

    func timerFired() {
        let readEvents = readEventsSinceTick
        readEventsSinceTick = 0
        service(0)
        recoveryTick(heard: readEvents > 0)
        guard let ctx = context, !closed, let current = events else { return }
        // Backstop for a reconnect that `followSocket` did not see.
        if socketInode(current.fd) != current.inode {
            Log.info("iscsi: session to \(url) now on a new connection (fd \(current.fd) reused)")
            removeSources()
            // A poller lets go at once; Dispatch sources call `followSocket` when cancelled.
            if poller != nil { followSocket() }
            return
        }
        // Backstop for a deaf read source: libiscsi closes sockets behind libdispatch's back,
        // and another session of the process may have reused the number while libdispatch
        // still tracked the old one. Input waiting with no read event for a whole interval
        // means the source missed it.
        var pfd = pollfd(fd: current.fd, events: Int16(POLLIN), revents: 0)
        if readEvents == 0, poll(&pfd, 1, 0) > 0, pfd.revents & Int16(POLLIN) != 0,
           iscsi_which_events(ctx) & Int32(POLLIN) != 0 {
            Log.warning("iscsi: read events for \(url) stalled; re-registering the socket")
            removeSources()
            service(Int32(POLLIN))
        }
    }

    /// Re-creates the sources if libiscsi's socket changed, and arms the write source exactly
    /// while libiscsi wants POLLOUT.
    func followSocket() {
        guard let ctx = context, !closed else { return }
        let fd = iscsi_get_fd(ctx)
        if linkUp, libiscsiDepth == 0, iscsi_is_logged_in(ctx) == 0 {
            // Backstop: libiscsi dropped the login without failing a call.
            connectionLost("logged out by libiscsi")
            return
        }
        // New sources wait until the old ones are fully cancelled: libdispatch unregisters a
        // cancelled source later, by fd number, and would take the new socket's registration
        // with it when libiscsi reused the number.
        if events?.fd != fd && sourcesBeingCancelled == 0 {
            let old = events?.fd
            removeSources()
            if fd >= 0 {
                installSources(fd: fd)
                if let old, old != fd {
                    Log.info("iscsi: session to \(url) now on a new connection (fd \(old) -> \(fd))")
                }
            }
        }
        guard var current = events else { return }
        let wantWrite = iscsi_which_events(ctx) & Int32(POLLOUT) != 0
        if wantWrite != current.writeArmed {
            switch current.watch {
            case .sources(_, _, let write):
                if wantWrite { write.resume() } else { write.suspend() }
            case .poller(let poller, let registration):
                poller.modify(registration, events: wantWrite ? [.readable, .writable] : .readable)
            }
            current.writeArmed = wantWrite
            events = current
        }
    }

    func installSources(fd: Int32) {
        if let poller {
            do {
                let registration = try poller.register(fd: fd, events: .readable, handler: { [weak self] _, events in
                    self?.socketEvent(events)
                }, afterDelivery: { [weak self] in
                    guard let self, self.flushScheduled else { return }
                    self.flush()
                })
                events = EventSources(fd: fd, inode: socketInode(fd), watch: .poller(poller, registration))
            } catch {
                Log.error("iscsi: cannot watch the socket of \(url): \(error)")
            }
            return
        }
        let watched = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard watched >= 0 else {
            Log.error("iscsi: cannot watch the socket of \(url): \(String(cString: strerror(errno)))")
            return
        }
        let read = DispatchSource.makeReadSource(fileDescriptor: watched, queue: queue)
        read.setEventHandler { @Sendable [weak self] in
            guard let self else { return }
            self.readEventsSinceTick &+= 1
            self.service(Int32(POLLIN))
        }
        let write = DispatchSource.makeWriteSource(fileDescriptor: watched, queue: queue)
        write.setEventHandler { @Sendable [weak self] in self?.service(Int32(POLLOUT)) }
        read.resume()
        // `write` stays inactive (suspended) until libiscsi wants POLLOUT.
        events = EventSources(fd: fd, inode: socketInode(fd), watch: .sources(watchedFD: watched, read: read, write: write))
    }

    /// The poller saw the socket ready: as the read source would (input, end of file or an
    /// error are all "readable"), else as the write source.
    func socketEvent(_ ready: FDPoller.Events) {
        if !ready.isDisjoint(with: [.readable, .error, .hangUp]) {
            readEventsSinceTick &+= 1
            service(Int32(POLLIN))
        } else if ready.contains(.writable) {
            service(Int32(POLLOUT))
        }
    }

    func removeSources(followingSocket: Bool = true) {
        guard let current = events else { return }
        events = nil
        let read: DispatchSourceRead, write: DispatchSourceWrite, watchedFD: Int32
        switch current.watch {
        case .poller(let poller, let registration):
            // Synchronous: no event of this registration is delivered after this.
            poller.unregister(registration)
            return
        case .sources(let fd, let r, let w):
            (watchedFD, read, write) = (fd, r, w)
        }
        if followingSocket { sourcesBeingCancelled += 2 }
        // Both handlers run on `queue`; the second one closes the duplicate fd.
        let pending = CancelCount(fd: watchedFD)
        let cancelled: @Sendable () -> Void = { [weak self] in
            pending.sourceCancelled()
            if followingSocket { self?.sourceCancelled() }
        }
        read.setCancelHandler(handler: cancelled)
        write.setCancelHandler(handler: cancelled)
        read.cancel()
        write.cancel()
        if !current.writeArmed { write.resume() }
    }

    /// Runs when libdispatch has let go of an old source's fd; the last one installs the
    /// sources for libiscsi's current socket.
    func sourceCancelled() {
        sourcesBeingCancelled -= 1
        if sourcesBeingCancelled == 0 { followSocket() }
    }

    /// Why the connection of `ctx` failed, in words: the socket's error, the target closing it,
    /// or libiscsi's message (whose last words after a failure are only that it cannot
    /// reconnect, its automatic reconnect being off).
    func failureReason(_ ctx: OpaquePointer) -> String {
        if let error = socketError(ctx) { return error }
        let fd = iscsi_get_fd(ctx)
        if fd >= 0 {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN) | Int16(truncatingIfNeeded: 0x2000 /* POLLRDHUP */), revents: 0)
            if poll(&pfd, 1, 0) > 0, pfd.revents & (Int16(POLLHUP) | Int16(truncatingIfNeeded: 0x2000)) != 0 {
                return "the target closed the connection"
            }
        }
        let text = lastError(ctx)
        return text.contains("Can not reconnect") ? "the connection failed" : text
    }

    /// The error of a connect still in progress on `ctx`'s socket, if it failed.
    func connectFailure(_ ctx: OpaquePointer) -> String? {
        let fd = iscsi_get_fd(ctx)
        guard fd >= 0 else { return nil }
        var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        guard poll(&pfd, 1, 0) > 0, pfd.revents & (Int16(POLLERR) | Int16(POLLHUP)) != 0 else { return nil }
        return "cannot connect: " + (socketError(ctx) ?? "connection failed")
    }

    func socketInode(_ fd: Int32) -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return 0 }
        return UInt64(st.st_ino)
    }

}

/// Closes a watched duplicate fd once both of its sources are cancelled. Only touched on the
/// session's queue.
final class CancelCount: @unchecked Sendable {
    private var remaining = 2
    private let fd: Int32
    init(fd: Int32) { self.fd = fd }
    func sourceCancelled() {
        remaining -= 1
        if remaining == 0 { Glibc.close(fd) }
    }
}
