// @testable imports need a debug build (SwiftPM compiles debug modules with testing
// enabled); in a release build the entry points that drive internal product types trap.
#if DEBUG
internal import CVhostShims
import Dispatch
import Glibc
@testable import VhostUserBackend
import VhostUserProtocol

/// Fuzzes a real `FrontendConnection` (the server side of one frontend) over a socketpair:
/// message framing, fds passed with SCM_RIGHTS, every request's handling and the ring
/// lifecycle, with a 64 KiB memfd as guest RAM and the shared in-memory virtio-scsi device
/// behind it (kicks make it serve whatever rings the messages set up).
///
/// Input: a u16 length L and L bytes written at the start of the memfd; then messages, each
/// a fd byte, a 12-byte header (request, flags, size) and min(size, 4096) payload bytes. The
/// fd byte: bits 0-1 how many fds, bits 2-3 which (0 the memfd, 1 a kick pipe's read end,
/// 2 a call pipe's write end, 3 /dev/null), bit 4: nine fds instead (more than the protocol
/// allows), bit 6: kick every ring after the message.
///
/// Invariants: the server never crashes or hangs; every reply it sends is well-formed (version
/// 1, REPLY flag, a request that was sent, at most 4096 bytes); at most one reply per
/// message; when the frontend closes, the connection cleans up (rings drained) promptly.
public func fuzzFrontendConnection(_ data: [UInt8]) {
    FuzzDeviceHarness.shared.run { fuzzFrontendConnectionExclusive(data) }
}

private func fuzzFrontendConnectionExclusive(_ data: [UInt8]) {
    var input = FuzzReader(data)
    let memoryLength = min(Int(input.u16()), ConnectionFixture.memorySize)
    let contents = input.bytes(memoryLength)
    let fixture = ConnectionFixture(contents: contents)
    defer { fixture.close() }
    let harness = FuzzDeviceHarness.shared
    harness.environment.begin(memory: nil, script: Array(data.suffix(16)), hold: false)
    defer { harness.environment.end() }

    var sentRequests: Set<UInt32> = []
    var sent = 0
    while !input.isAtEnd && sent < 64 {
        let fdSpec = input.u8()
        let request = input.u32()
        let flags = input.u32()
        let size = input.u32()
        let payload = input.bytes(size <= UInt32(VhostUserHeader.maxPayload) ? Int(size) : 0)
        var fds: [Int32] = []
        if fdSpec & 0x10 != 0 {
            fds = Array(repeating: fixture.devNull, count: 9)
        } else {
            let kind = [fixture.memfd, fixture.kickRead, fixture.callWrite, fixture.devNull][Int(fdSpec >> 2) & 3]
            fds = Array(repeating: kind, count: Int(fdSpec & 3))
        }
        var bytes: [UInt8] = []
        VhostUserHeader(request: request, flags: VhostUserHeaderFlags(rawValue: flags), size: size).encode(into: &bytes)
        bytes += payload
        guard fixture.send(bytes, fds: fds) else { break }  // the server dropped the connection
        sentRequests.insert(request)
        sent += 1
        if fdSpec & 0x40 != 0 { fixture.kick() }
    }
    let replies = fixture.finish()
    // Every reply: version 1 with REPLY, for a request that was sent, a sane size.
    var offset = 0
    var count = 0
    while offset < replies.count {
        precondition(replies.count - offset >= VhostUserHeader.byteCount, "a truncated reply header")
        let header = replies[offset..<(offset + VhostUserHeader.byteCount)].withUnsafeBytes { VhostUserHeader($0) }
        precondition(header.flags.rawValue == VhostUserHeaderFlags([.version1, .reply]).rawValue,
                     "reply flags 0x\(String(header.flags.rawValue, radix: 16))")
        precondition(sentRequests.contains(header.request), "a reply to request \(header.request), which was never sent")
        precondition(header.size <= 4096 && replies.count - offset - 12 >= Int(header.size), "a truncated reply")
        offset += VhostUserHeader.byteCount + Int(header.size)
        count += 1
    }
    precondition(count <= sent, "\(count) replies to \(sent) messages")
}

/// The frontend's end of one fuzzed connection and the fds it can pass.
private final class ConnectionFixture {
    static let memorySize = 64 << 10
    static let controlQueue = DispatchQueue(label: "fuzz.vhost-user.control")

    let frontendFD: Int32
    let memfd: Int32
    let kickRead: Int32
    let kickWrite: Int32
    let callRead: Int32
    let callWrite: Int32
    let devNull: Int32
    let closed = DispatchSemaphore(value: 0)
    private var connection: FrontendConnection?

    init(contents: [UInt8]) {
        var pair: [Int32] = [-1, -1]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        frontendFD = pair[0]
        memfd = CVhostShims_memfd_create("fuzz-guest-ram", 1 /* MFD_CLOEXEC */)
        precondition(memfd >= 0 && ftruncate(memfd, off_t(Self.memorySize)) == 0, "memfd")
        if !contents.isEmpty { precondition(pwrite(memfd, contents, contents.count, 0) == contents.count) }
        var kick: [Int32] = [-1, -1]
        var call: [Int32] = [-1, -1]
        precondition(pipe(&kick) == 0 && pipe(&call) == 0)
        for fd in kick + call {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        (kickRead, kickWrite, callRead, callWrite) = (kick[0], kick[1], call[0], call[1])
        devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(frontendFD, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(frontendFD, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let closed = self.closed
        connection = FrontendConnection(fd: pair[1], device: FuzzDeviceHarness.shared.device, controlQueue: Self.controlQueue,
                                        options: BackendOptions(drainTimeout: .seconds(2))) { closed.signal() }
        let started = connection
        Self.controlQueue.sync { started?.start() }
    }

    /// Sends one message; false when the server has closed its end.
    func send(_ bytes: [UInt8], fds: [Int32]) -> Bool {
        let channel = MessageChannel(fd: dup(frontendFD))
        do {
            // The channel frames a header and payload itself; send the raw bytes through it.
            let header = bytes.withUnsafeBytes { VhostUserHeader($0) }
            try channel.send(request: header.request, flags: header.flags, payload: Array(bytes[12...]), fds: fds)
            return true
        } catch {
            precondition(error.errno == EPIPE || error.errno == ECONNRESET, "sendmsg: \(error)")
            return false
        }
    }

    func kick() {
        var one: UInt64 = 1
        _ = write(kickWrite, &one, 8)
    }

    /// Closes the frontend's sending side, collects every reply until the server closes,
    /// and waits for the connection to clean up.
    func finish() -> [UInt8] {
        shutdown(frontendFD, Int32(SHUT_WR))
        precondition(closed.wait(timeout: .now() + .seconds(10)) == .success,
                     "the connection did not clean up within 10 s of the frontend leaving")
        // As the server does once a connection has cleaned up: drop it, which closes its socket.
        Self.controlQueue.sync { connection = nil }
        var replies: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(frontendFD, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                replies += buffer[0..<n]
                continue
            }
            if n < 0 && errno == EINTR { continue }
            precondition(n == 0 || errno == ECONNRESET, "the server's socket stayed open after cleanup (errno \(errno))")
            break
        }
        return replies
    }

    func close() {
        for fd in [frontendFD, memfd, kickRead, kickWrite, callRead, callWrite, devNull] { _ = Glibc.close(fd) }
    }
}
#else
public func fuzzFrontendConnection(_ data: [UInt8]) {
    preconditionFailure("FuzzTargets must be built in debug (it uses @testable imports)")
}
#endif
