import Foundation

/// A TCP relay on 127.0.0.1 in front of a target portal that records what passes, so a test
/// can read the login exchange and check the header digests on the wire. Every accepted
/// connection gets its own connection to the target (a reconnect is a second recording).
final class TCPRelay: @unchecked Sendable {
    /// What one relayed connection carried (the first `recordLimit` bytes each way).
    struct Recording {
        var toTarget: [UInt8] = []
        var toInitiator: [UInt8] = []
    }

    let port: Int
    private let targetPort: Int
    private let listenFD: Int32
    private let lock = NSLock()
    private var recordings: [Recording] = []
    private var openFDs: Set<Int32> = []
    private var stopped = false
    private let threads = DispatchGroup()
    private static let recordLimit = 8 << 20

    init(targetPort: Int) throws {
        // `stop` closes connections a background logout may still write to (libiscsi writes
        // with writev): EPIPE, not a SIGPIPE that kills the test process. The server ignores
        // SIGPIPE the same way.
        signal(SIGPIPE, SIG_IGN)
        self.targetPort = targetPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestError("relay: socket failed: errno \(errno)") }
        var address = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 8) == 0 else {
            close(fd)
            throw TestError("relay: cannot listen on 127.0.0.1: errno \(errno)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listenFD = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        threads.enter()
        Thread { [self] in acceptLoop(); threads.leave() }.start()
    }

    /// The recordings so far, one per accepted connection, oldest first.
    var connections: [Recording] {
        lock.lock()
        defer { lock.unlock() }
        return recordings
    }

    /// Closes everything and waits for the relay's threads.
    func stop() {
        lock.lock()
        stopped = true
        for fd in openFDs { shutdown(fd, Int32(SHUT_RDWR)) }
        lock.unlock()
        threads.wait()
        close(listenFD)
    }

    private func acceptLoop() {
        while true {
            lock.lock()
            let done = stopped
            lock.unlock()
            if done { return }
            var pfd = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 100) > 0 else { continue }
            let client = accept(listenFD, nil, nil)
            guard client >= 0 else { continue }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = Self.loopback(port: targetPort)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard upstream >= 0, connected == 0 else {
                close(client)
                if upstream >= 0 { close(upstream) }
                continue
            }
            lock.lock()
            let index = recordings.count
            recordings.append(Recording())
            openFDs.formUnion([client, upstream])
            lock.unlock()
            let pair = DispatchGroup()
            for (from, to, toTarget) in [(client, upstream, true), (upstream, client, false)] {
                threads.enter()
                pair.enter()
                Thread { [self] in
                    pump(from: from, to: to, index: index, toTarget: toTarget)
                    pair.leave()
                    threads.leave()
                }.start()
            }
            threads.enter()
            pair.notify(queue: .global()) { [self] in
                lock.lock()
                openFDs.subtract([client, upstream])
                lock.unlock()
                close(client)
                close(upstream)
                threads.leave()
            }
        }
    }

    /// Copies `from` to `to` until either side ends, recording the bytes; then ends both
    /// directions, as a real connection loss would.
    private func pump(from: Int32, to: Int32, index: Int, toTarget: Bool) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        copying: while true {
            let n = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            lock.lock()
            if toTarget, recordings[index].toTarget.count < Self.recordLimit {
                recordings[index].toTarget += buffer[..<n]
            } else if !toTarget, recordings[index].toInitiator.count < Self.recordLimit {
                recordings[index].toInitiator += buffer[..<n]
            }
            lock.unlock()
            var offset = 0
            while offset < n {
                let written = buffer.withUnsafeBytes { write(to, $0.baseAddress! + offset, n - offset) }
                if written < 0 && errno == EINTR { continue }
                if written <= 0 { break copying }
                offset += written
            }
        }
        shutdown(from, Int32(SHUT_RDWR))
        shutdown(to, Int32(SHUT_RDWR))
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }
}

/// Reads a recorded iSCSI byte stream (one direction of one connection): the login text keys,
/// and after login whether each PDU header carries a correct CRC32C header digest
/// (RFC 7143 §11.2: BHS and AHS, then the digest, then the padded data segment).
struct ISCSIStreamReport {
    /// Every text key=value of the login PDUs, in order.
    var loginKeys: [String] = []
    /// PDUs after the login.
    var fullFeaturePDUs = 0
    /// Their opcodes (RFC 7143 §11.1.1), in order.
    var fullFeatureOpcodes: [UInt8] = []
    /// Of those, how many carried a header digest that did not match.
    var badDigests = 0

    /// `headerDigest`: whether PDUs after the login carry a 4-byte header digest.
    init(_ bytes: [UInt8], headerDigest: Bool) {
        var p = 0
        var loggedIn = false
        while p + 48 <= bytes.count {
            let opcode = bytes[p] & 0x3F
            let flags = bytes[p + 1]
            let ahs = Int(bytes[p + 4]) * 4
            let dataLength = Int(bytes[p + 5]) << 16 | Int(bytes[p + 6]) << 8 | Int(bytes[p + 7])
            let digestLength = loggedIn && headerDigest ? 4 : 0
            let dataStart = p + 48 + ahs + digestLength
            let end = dataStart + (dataLength + 3) / 4 * 4
            guard end <= bytes.count else { break }
            if loggedIn {
                fullFeaturePDUs += 1
                fullFeatureOpcodes.append(opcode)
                if headerDigest {
                    let d = p + 48 + ahs
                    let sent = UInt32(bytes[d]) | UInt32(bytes[d + 1]) << 8 | UInt32(bytes[d + 2]) << 16 | UInt32(bytes[d + 3]) << 24
                    if sent != CRC32C.checksum(bytes[p..<(p + 48 + ahs)]) { badDigests += 1 }
                }
            } else if opcode == 0x03 || opcode == 0x23 {
                // Login request or response: NUL-separated key=value pairs.
                loginKeys += bytes[dataStart..<(dataStart + dataLength)].split(separator: 0)
                    .map { String(decoding: $0, as: UTF8.self) }
                // Transit to the full feature phase (NSG 3): digests start with the next PDU.
                if flags & 0x80 != 0 && flags & 0x03 == 3 { loggedIn = true }
            }
            p = end
        }
    }

    func value(of key: String) -> String? {
        loginKeys.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
    }
}

/// CRC32C (Castagnoli, reflected 0x82F63B78), as iSCSI digests use it (RFC 7143 §13.1); sent
/// least significant byte first.
enum CRC32C {
    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        }
        return ~crc
    }
}

/// Runs `body` with the process's stderr (where `Log` writes) sent to a file, and returns what
/// was written there. Only for short, bounded sections of a test.
func capturingStandardError(_ body: () throws -> Void) rethrows -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("stderr-\(UUID().uuidString)").path
    let file = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0o600)
    precondition(file >= 0, "cannot create \(path)")
    let saved = dup(2)
    dup2(file, 2)
    defer {
        dup2(saved, 2)
        close(saved)
        close(file)
        unlink(path)
    }
    try body()
    lseek(file, 0, SEEK_SET)
    var output: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(file, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        output += buffer[..<n]
    }
    return String(decoding: output, as: UTF8.self)
}
