import Dispatch
import EventPoller
import Glibc
import Synchronization
import Testing

/// A pipe whose ends close when the test ends.
private final class Pipe: @unchecked Sendable {
    let read: Int32
    let write: Int32
    init() {
        var fds: [Int32] = [0, 0]
        precondition(pipe(&fds) == 0)
        read = fds[0]
        write = fds[1]
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    }
    deinit {
        close(read)
        close(write)
    }
    func send(_ byte: UInt8 = 1) {
        var b = byte
        precondition(Glibc.write(write, &b, 1) == 1)
    }
}

private func waitUntil(_ condition: () -> Bool, timeout: Double = 5) -> Bool {
    let deadline = DispatchTime.now() + timeout
    while DispatchTime.now() < deadline {
        if condition() { return true }
        usleep(1000)
    }
    return condition()
}

@Suite(.serialized) struct FDPollerTests {
    @Test func handlerRunsOnTheQueueAndSeesReadableData() throws {
        let queue = DispatchQueue(label: "poller-test")
        let poller = FDPoller(queue: queue, name: "test")
        let pipe = Pipe()
        let received = Mutex<[UInt8]>([])
        let onQueue = Mutex(true)
        try queue.sync {
            _ = try poller.register(fd: pipe.read, events: .readable) { fd, events in
                dispatchPrecondition(condition: .onQueue(queue))
                if !poller.isDelivering || !events.contains(.readable) { onQueue.withLock { $0 = false } }
                var byte: UInt8 = 0
                while read(fd, &byte, 1) == 1 { received.withLock { $0.append(byte) } }
            }
        }
        pipe.send(7)
        #expect(waitUntil { received.withLock { $0 } == [7] })
        pipe.send(8)
        #expect(waitUntil { received.withLock { $0 } == [7, 8] })
        #expect(onQueue.withLock { $0 })
    }

    @Test func unregisterStopsDeliveryAndClosesOnlyTheDuplicate() throws {
        let queue = DispatchQueue(label: "poller-test")
        let poller = FDPoller(queue: queue, name: "test")
        let pipe = Pipe()
        let calls = Mutex(0)
        let registration = try queue.sync {
            try poller.register(fd: pipe.read, events: .readable) { _, _ in calls.withLock { $0 += 1 } }
        }
        queue.sync { poller.unregister(registration) }
        pipe.send()
        usleep(50_000)
        #expect(calls.withLock { $0 } == 0)
        // The caller's fd is still open and still holds the byte.
        var byte: UInt8 = 0
        #expect(read(pipe.read, &byte, 1) == 1)
        // A stale registration is ignored.
        queue.sync { poller.unregister(registration) }
    }

    @Test func eventTakenBeforeUnregisterIsDropped() throws {
        // Two fds ready in one batch: the first handler unregisters the second, whose event
        // epoll has already reported; it must not run.
        let queue = DispatchQueue(label: "poller-test")
        let poller = FDPoller(queue: queue, name: "test")
        let a = Pipe(), b = Pipe()
        let bCalls = Mutex(0)
        let aCalls = Mutex(0)
        nonisolated(unsafe) var second: FDPoller.Registration?
        nonisolated(unsafe) var first: FDPoller.Registration?
        // Make both readable before the thread exists so they arrive in one batch.
        a.send()
        b.send()
        try queue.sync {
            first = try poller.register(fd: a.read, events: .readable) { _, _ in
                aCalls.withLock { $0 += 1 }
                if let s = second { poller.unregister(s); second = nil }
                if let f = first { poller.unregister(f); first = nil }
            }
            second = try poller.register(fd: b.read, events: .readable) { _, _ in
                bCalls.withLock { $0 += 1 }
                if let f = first { poller.unregister(f); first = nil }
                if let s = second { poller.unregister(s); second = nil }
            }
        }
        #expect(waitUntil { aCalls.withLock { $0 } + bCalls.withLock { $0 } > 0 })
        usleep(50_000)
        // Whichever ran first unregistered both: exactly one handler ran, exactly once.
        #expect(aCalls.withLock { $0 } + bCalls.withLock { $0 } == 1)
    }

    @Test func writableOnlyWhileAskedFor() throws {
        let queue = DispatchQueue(label: "poller-test")
        let poller = FDPoller(queue: queue, name: "test")
        let pipe = Pipe()
        let writable = Mutex(0)
        let registration = try queue.sync {
            try poller.register(fd: pipe.write, events: []) { _, events in
                if events.contains(.writable) { writable.withLock { $0 += 1 } }
            }
        }
        usleep(50_000)
        #expect(writable.withLock { $0 } == 0)
        queue.sync { poller.modify(registration, events: .writable) }
        #expect(waitUntil { writable.withLock { $0 } > 0 })
        queue.sync { poller.modify(registration, events: []) }
        usleep(20_000)
        let settled = writable.withLock { $0 }
        usleep(50_000)
        #expect(writable.withLock { $0 } == settled)
    }

    @Test func afterDeliveryRunsOnceAtTheEndOfTheBatch() throws {
        let queue = DispatchQueue(label: "poller-test")
        let poller = FDPoller(queue: queue, name: "test")
        let pipe = Pipe()
        let log = Mutex<[String]>([])
        nonisolated(unsafe) var registration: FDPoller.Registration?
        try queue.sync {
            registration = try poller.register(fd: pipe.read, events: .readable, handler: { fd, _ in
                var byte: UInt8 = 0
                while read(fd, &byte, 1) == 1 {}
                log.withLock { $0.append("handler") }
                #expect(poller.requestAfterDelivery(registration!))
                #expect(poller.requestAfterDelivery(registration!))
            }, afterDelivery: { log.withLock { $0.append("after") } })
            // Not delivering here: the caller must fall back.
            #expect(!poller.requestAfterDelivery(registration!))
        }
        pipe.send()
        #expect(waitUntil { log.withLock { $0 } == ["handler", "after"] })
    }

    @Test func attachedPollerIsFoundByQueueAndReleased() {
        let queue = DispatchQueue(label: "poller-test")
        var poller: FDPoller? = FDPoller(queue: queue, name: "test")
        poller!.attachToQueue()
        #expect(FDPoller.attached(to: queue) === poller)
        #expect(FDPoller.attached(to: DispatchQueue(label: "other")) == nil)
        poller = nil
        #expect(FDPoller.attached(to: queue) == nil)
    }

    /// Counted per poller, not as the process's open fds: other suites run in parallel and
    /// hold fds of their own for seconds (a process-wide count made this test fail in CI).
    /// The thread is found by its name; its loop closes the epoll fd, the wake eventfd and the
    /// duplicates before the thread exits, so a thread gone means those are closed; the
    /// duplicate of the pipe is also counted directly.
    @Test func releasingThePollerEndsItsThreadAndClosesItsFDs() throws {
        let queue = DispatchQueue(label: "poller-test")
        let pipe = Pipe()
        let name = "fdp-release"
        #expect(openFDs(sameFileAs: pipe.read) == 2)  // the pipe's two ends
        do {
            let poller = FDPoller(queue: queue, name: name)
            _ = try queue.sync { try poller.register(fd: pipe.read, events: .readable) { _, _ in } }
            #expect(waitUntil { threads(named: name) == 1 })  // it names itself once running
            #expect(openFDs(sameFileAs: pipe.read) == 3)  // and the poller's duplicate
        }
        #expect(waitUntil { threads(named: name) == 0 && openFDs(sameFileAs: pipe.read) == 2 })
    }

    /// An owner released on another thread unregisters through the queue instead of trapping.
    @Test func unregisterOffTheQueueIsMovedOntoIt() throws {
        let queue = DispatchQueue(label: "poller-test-off-queue")
        let poller = FDPoller(queue: queue, name: "test")
        let pipe = Pipe()
        let hits = Mutex(0)
        let registration = try queue.sync {
            try poller.register(fd: pipe.read, events: .readable) { fd, _ in
                var byte: UInt8 = 0
                _ = read(fd, &byte, 1)
                hits.withLock { $0 += 1 }
            }
        }
        pipe.send()
        #expect(waitUntil { hits.withLock { $0 } == 1 })
        poller.unregister(registration)   // not on `queue`
        pipe.send()
        usleep(50_000)
        #expect(hits.withLock { $0 } == 1, "no delivery after unregister")
    }
}

/// The names in a /proc directory of this process (fds, tasks), without "." and "..".
private func procEntries(_ path: String) -> [String] {
    guard let dir = opendir(path) else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

/// What /proc/self/fd/N (or another /proc link) points at, e.g. "pipe:[1234]".
private func procLink(_ path: String) -> String? {
    var buffer = [UInt8](repeating: 0, count: 256)
    let n = buffer.withUnsafeMutableBytes { readlink(path, $0.baseAddress!.assumingMemoryBound(to: CChar.self), 255) }
    return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : nil
}

/// The open fds of this process that refer to the same file as `fd`.
private func openFDs(sameFileAs fd: Int32) -> Int {
    guard let target = procLink("/proc/self/fd/\(fd)") else { return -1 }
    return procEntries("/proc/self/fd").filter { procLink("/proc/self/fd/\($0)") == target }.count
}

/// The threads of this process named `name` (its first 15 bytes, as the kernel keeps it).
private func threads(named name: String) -> Int {
    procEntries("/proc/self/task").filter { tid in
        let fd = open("/proc/self/task/\(tid)/comm", O_RDONLY)
        guard fd >= 0 else { return false }   // the thread has just ended
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, 32) }
        // comm ends in a newline.
        return n > 0 && String(decoding: buffer[0..<n].prefix { $0 != 0x0A }, as: UTF8.self) == String(name.prefix(15))
    }.count
}
