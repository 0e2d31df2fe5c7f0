import Dispatch
import Glibc
internal import CLibISCSI
import ServerLog

/// The Dispatch sources watching one socket of libiscsi's.
struct EventSources {
    let fd: Int32
    /// The socket's inode: a reconnect can reuse the fd number for a new socket.
    let inode: UInt64
    let read: DispatchSourceRead
    let write: DispatchSourceWrite
    /// Whether `write` is resumed. A suspended source must be resumed before it is released.
    var writeArmed = false
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
        removeSources()
    }

    /// Writes libiscsi's queued PDUs now, if there are any. Call once after a batch of
    /// `submit`s; without it they are written when the current turn of the queue ends.
    public func flush() {
        flushScheduled = false
        guard let ctx = context, !closed, libiscsiDepth == 0 else { return }
        if iscsi_which_events(ctx) & Int32(POLLOUT) != 0 { service(Int32(POLLOUT)) }
    }

    /// Makes sure queued output gets written at the end of this turn of the queue.
    @inline(__always)
    func scheduleFlush() {
        // Inside `service`, its epilogue writes; otherwise one async flush per turn.
        guard !flushScheduled, libiscsiDepth == 0 else { return }
        flushScheduled = true
        queue.async { @Sendable [weak self] in
            guard let self, self.flushScheduled else { return }
            self.flush()
        }
    }

    /// Lets libiscsi handle `revents`, then writes what the callbacks queued (a completion
    /// often submits the next command) and re-arms the sources.
    func service(_ revents: Int32) {
        guard let ctx = context, !closed else { return }
        let rc = withLibiscsi { iscsi_service(ctx, revents) }
        guard context != nil, !closed else { return }
        if rc < 0 {
            noteServiceError(ctx)
        } else if revents & Int32(POLLOUT) == 0 && iscsi_which_events(ctx) & Int32(POLLOUT) != 0 {
            // The socket is almost always writable: try now, the write source only if it is not.
            _ = withLibiscsi { iscsi_service(ctx, Int32(POLLOUT)) }
            guard context != nil, !closed else { return }
        }
        followSocket()
    }

    func timerFired() {
        service(0)
        guard context != nil, !closed, let current = events else { return }
        // A reconnect may have reused the fd number for a new socket.
        if socketInode(current.fd) != current.inode {
            removeSources()
            followSocket()
        }
    }

    /// Re-creates the sources if libiscsi's socket changed, and arms the write source exactly
    /// while libiscsi wants POLLOUT.
    func followSocket() {
        guard let ctx = context, !closed else { return }
        let fd = iscsi_get_fd(ctx)
        if events?.fd != fd {
            let old = events?.fd
            removeSources()
            if fd >= 0 {
                installSources(fd: fd)
                if let old {
                    Log.info("iscsi: session to \(url) now on a new connection (fd \(old) -> \(fd))")
                    lastServiceError = nil
                }
            } else {
                Log.warning("iscsi: session to \(url) has no connection; libiscsi is reconnecting")
            }
        }
        guard var current = events else { return }
        let wantWrite = iscsi_which_events(ctx) & Int32(POLLOUT) != 0
        if wantWrite != current.writeArmed {
            if wantWrite { current.write.resume() } else { current.write.suspend() }
            current.writeArmed = wantWrite
            events = current
        }
    }

    func installSources(fd: Int32) {
        let read = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        read.setEventHandler { @Sendable [weak self] in self?.service(Int32(POLLIN)) }
        let write = DispatchSource.makeWriteSource(fileDescriptor: fd, queue: queue)
        write.setEventHandler { @Sendable [weak self] in self?.service(Int32(POLLOUT)) }
        read.resume()
        // `write` stays inactive (suspended) until libiscsi wants POLLOUT.
        events = EventSources(fd: fd, inode: socketInode(fd), read: read, write: write)
    }

    func removeSources() {
        guard let current = events else { return }
        events = nil
        current.read.cancel()
        current.write.cancel()
        if !current.writeArmed { current.write.resume() }
    }

    func socketInode(_ fd: Int32) -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return 0 }
        return UInt64(st.st_ino)
    }

    func noteServiceError(_ ctx: OpaquePointer) {
        let message = lastError(ctx)
        guard message != lastServiceError else { return }
        lastServiceError = message
        Log.warning("iscsi: connection to \(url) failed: \(message); libiscsi reconnects")
    }
}
