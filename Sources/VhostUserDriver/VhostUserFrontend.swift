import Glibc
internal import CVhostShims
import VhostUserBackend
import VhostUserProtocol
import VirtioCore

/// A vhost-user frontend (the VMM side) over a connected Unix socket, built from the same
/// encoders the server decodes with. Blocking, with a receive timeout so a silent backend
/// fails instead of hanging. Only the vhost-user specification is assumed of the backend:
/// REPLY_ACK, MQ and the other protocol features are used when offered and not otherwise.
/// Used from one thread (the fds it hands out may be used anywhere).
public final class VhostUserFrontend {
    public enum Error: Swift.Error, CustomStringConvertible, Equatable {
        /// The backend answered a REPLY_ACK with a non-zero (failure) value.
        case nack(request: UInt32, value: UInt64)
        case disconnected
        case timeout
        case badReply(String)

        public var description: String {
            switch self {
            case .nack(let r, let v):
                let name = VhostUserRequest(rawValue: r).map { "\($0)" } ?? "\(r)"
                return "backend refused \(name) (ack \(v))"
            case .disconnected: return "backend closed the connection"
            case .timeout: return "no reply from the backend before the timeout"
            case .badReply(let why): return "bad reply: \(why)"
            }
        }
    }

    /// What a backend did with a message that needed an answer.
    public enum Outcome: Equatable {
        case ack(UInt64)
        case reply([UInt8])
        case disconnected
    }

    private var channel: MessageChannel?
    /// REPLY_ACK was negotiated: every request without a reply of its own gets NEED_REPLY.
    public private(set) var replyAck = false
    /// What SET_FEATURES / SET_PROTOCOL_FEATURES acknowledged (after `negotiate`).
    public private(set) var features: VirtioFeatures = []
    public private(set) var protocolFeatures: VhostUserProtocolFeatures = []
    /// What GET_FEATURES offered (after `negotiate`).
    public private(set) var offeredFeatures: VirtioFeatures?
    public private(set) var kickFDs: [Int: Int32] = [:]
    public private(set) var callFDs: [Int: Int32] = [:]

    /// Connects to the backend's socket. `timeout` bounds every wait for a reply.
    public init(socketPath: String, timeout: Double = 10) throws {
        let fd = try UnixSocket.connect(path: socketPath)
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        channel = MessageChannel(fd: fd)
    }

    deinit {
        kickFDs.values.forEach { close($0) }
        callFDs.values.forEach { close($0) }
    }

    public var isConnected: Bool { channel != nil }

    /// The socket's fd while connected (to watch for the backend going away).
    public var socketFD: Int32? { channel?.fd }

    /// Closes the socket (the backend sees the frontend go away).
    public func disconnect() { channel = nil }

    // MARK: - Raw messages

    /// Sends one message as is (any request code, flags, payload and fds).
    public func sendRaw(request: UInt32, flags: VhostUserHeaderFlags = .version1, payload: [UInt8] = [],
                        fds: [Int32] = []) throws {
        guard let channel else { throw Error.disconnected }
        do {
            try channel.send(request: request, flags: flags, payload: payload, fds: fds)
        } catch {
            if error.errno == EPIPE || error.errno == ECONNRESET { throw Error.disconnected }
            throw error
        }
    }

    /// Reads one reply and keeps the fds that come with it (GET_INFLIGHT_FD's region): the
    /// caller owns them.
    public func receiveWithFileDescriptors() throws -> ReceivedMessage {
        guard let channel else { throw Error.disconnected }
        do {
            return try channel.receive()
        } catch MessageChannel.ReceiveError.closed {
            throw Error.disconnected
        }
    }

    /// Reads one reply; fds that come with it are closed.
    public func receive() throws -> ReceivedMessage {
        guard let channel else { throw Error.disconnected }
        do {
            let message = try channel.receive()
            message.closeFileDescriptors()
            return message
        } catch MessageChannel.ReceiveError.closed {
            throw Error.disconnected
        } catch MessageChannel.ReceiveError.system(let e) where e.errno == EAGAIN || e.errno == EWOULDBLOCK {
            throw Error.timeout
        } catch MessageChannel.ReceiveError.system(let e) where e.errno == ECONNRESET {
            throw Error.disconnected
        }
    }

    /// Reads the answer to `request`: a u64 ack (`expectAck`) or a reply payload; reports a
    /// closed connection as `.disconnected` instead of throwing.
    public func awaitOutcome(of request: UInt32, expectAck: Bool) throws -> Outcome {
        let message: ReceivedMessage
        do { message = try receive() } catch Error.disconnected { return .disconnected }
        guard message.header.request == request, message.header.flags.contains(.reply) else {
            throw Error.badReply("got request \(message.header.request) flags 0x\(String(message.header.flags.rawValue, radix: 16)) "
                                 + "answering \(request)")
        }
        if expectAck {
            guard message.payload.count == 8 else { throw Error.badReply("ack of \(message.payload.count) bytes") }
            return .ack(message.payload.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        }
        return .reply(message.payload)
    }

    // MARK: - Typed requests

    /// A request with a reply payload of its own (GET_*).
    public func query(_ request: VhostUserRequest, payload: [UInt8] = []) throws -> [UInt8] {
        try sendRaw(request: request.rawValue, payload: payload)
        switch try awaitOutcome(of: request.rawValue, expectAck: false) {
        case .reply(let bytes): return bytes
        case .ack: throw Error.badReply("ack")
        case .disconnected: throw Error.disconnected
        }
    }

    public func queryU64(_ request: VhostUserRequest) throws -> UInt64 {
        let bytes = try query(request)
        guard bytes.count == 8 else { throw Error.badReply("\(request) reply of \(bytes.count) bytes") }
        return bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    /// A request without a reply of its own. With REPLY_ACK it carries NEED_REPLY and the ack
    /// is read: a non-zero one throws `.nack`.
    public func command(_ request: VhostUserRequest, payload: [UInt8] = [], fds: [Int32] = []) throws {
        try sendRaw(request: request.rawValue, flags: replyAck ? [.version1, .needReply] : .version1,
                    payload: payload, fds: fds)
        guard replyAck else { return }
        switch try awaitOutcome(of: request.rawValue, expectAck: true) {
        case .ack(0): return
        case .ack(let v): throw Error.nack(request: request.rawValue, value: v)
        case .reply: throw Error.badReply("payload")
        case .disconnected: throw Error.disconnected
        }
    }

    public static func u64(_ value: UInt64) -> [UInt8] {
        var b: [UInt8] = []
        b.appendUnaligned(value)
        return b
    }

    public func getFeatures() throws -> VirtioFeatures { VirtioFeatures(rawValue: try queryU64(.getFeatures)) }
    public func setFeatures(_ f: VirtioFeatures) throws {
        try command(.setFeatures, payload: Self.u64(f.rawValue))
        features = f
    }
    public func getProtocolFeatures() throws -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures(rawValue: try queryU64(.getProtocolFeatures))
    }
    /// Sets protocol features; from now on REPLY_ACK is used if it is among them.
    public func setProtocolFeatures(_ f: VhostUserProtocolFeatures) throws {
        try command(.setProtocolFeatures, payload: Self.u64(f.rawValue))
        replyAck = f.contains(.replyAck)
        protocolFeatures = f
    }
    public func setOwner() throws { try command(.setOwner) }
    /// GET_QUEUE_NUM: the most vrings the backend supports (needs the MQ protocol feature).
    public func getQueueNum() throws -> UInt64 { try queryU64(.getQueueNum) }

    public func setMemTable(_ memory: SharedGuestMemory) throws {
        try command(.setMemTable, payload: memory.memoryTable.encoded(), fds: memory.fileDescriptors)
    }
    public func setVringNum(_ index: Int, _ num: UInt32) throws {
        try command(.setVringNum, payload: VringState(index: UInt32(index), num: num).encoded())
    }
    public func setVringBase(_ index: Int, _ base: UInt16) throws {
        try command(.setVringBase, payload: VringState(index: UInt32(index), num: UInt32(base)).encoded())
    }
    public func setVringAddr(_ address: VringAddress) throws { try command(.setVringAddr, payload: address.encoded()) }
    public func setVringEnable(_ index: Int, _ enabled: Bool) throws {
        try command(.setVringEnable, payload: VringState(index: UInt32(index), num: enabled ? 1 : 0).encoded())
    }
    /// GET_VRING_BASE: stops the ring; returns the avail index the device will resume from.
    public func getVringBase(_ index: Int) throws -> UInt32 {
        let bytes = try query(.getVringBase, payload: VringState(index: UInt32(index), num: 0).encoded())
        guard bytes.count == VringState.byteCount else { throw Error.badReply("GET_VRING_BASE of \(bytes.count) bytes") }
        let state = VringState(decoding: bytes)
        guard state.index == UInt32(index) else { throw Error.badReply("GET_VRING_BASE for ring \(state.index)") }
        return state.num
    }

    /// SET_VRING_KICK with a fresh eventfd (kept to kick with).
    public func setVringKick(_ index: Int) throws {
        let fd = try Self.makeEventFD(nonblocking: true)
        if let old = kickFDs.updateValue(fd, forKey: index) { close(old) }
        try command(.setVringKick, payload: Self.u64(UInt64(index)), fds: [fd])
    }

    /// SET_VRING_CALL with a fresh eventfd (kept to wait on). A blocking one lets a waiter
    /// sleep in one read(2) instead of poll(2) + read(2).
    public func setVringCall(_ index: Int, nonblocking: Bool = true) throws {
        let fd = try Self.makeEventFD(nonblocking: nonblocking)
        if let old = callFDs.updateValue(fd, forKey: index) { close(old) }
        try command(.setVringCall, payload: Self.u64(UInt64(index)), fds: [fd])
    }

    public static func makeEventFD(nonblocking: Bool = true) throws -> Int32 {
        let flags = CVhostShims_EFD_CLOEXEC() | (nonblocking ? CVhostShims_EFD_NONBLOCK() : 0)
        let fd = CVhostShims_eventfd(0, flags)
        guard fd >= 0 else { throw DriverError.system("eventfd", errno) }
        return fd
    }

    // MARK: - What QEMU does

    /// Features a QEMU vhost-user-scsi frontend acknowledges when offered.
    public static let qemuFeatures: VirtioFeatures = [.version1, .eventIndex, .indirectDescriptors, .protocolFeatures]
    public static let qemuProtocolFeatures: VhostUserProtocolFeatures = [.replyAck, .mq, .configureMemSlots, .resetDevice, .status]

    /// The device-init part of QEMU's sequence: GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
    /// GET_QUEUE_NUM, SET_OWNER, SET_FEATURES. Returns the vring count the backend reported
    /// (GET_QUEUE_NUM), or `fallbackQueueCount` when MQ is not negotiated.
    /// Without VHOST_USER_F_PROTOCOL_FEATURES it fails unless `requireProtocolFeatures` is false.
    @discardableResult
    public func negotiate(features wanted: VirtioFeatures = qemuFeatures,
                          protocolFeatures wantedProtocol: VhostUserProtocolFeatures = qemuProtocolFeatures,
                          requireProtocolFeatures: Bool = true, fallbackQueueCount: Int = 3) throws -> Int {
        let offered = try getFeatures()
        offeredFeatures = offered
        var queues = fallbackQueueCount
        if offered.contains(.protocolFeatures) {
            let offeredProtocol = try getProtocolFeatures()
            let chosen = offeredProtocol.intersection(wantedProtocol)
            try setProtocolFeatures(chosen)
            if chosen.contains(.mq) { queues = Int(try getQueueNum()) }
        } else if requireProtocolFeatures {
            throw Error.badReply("no VHOST_USER_F_PROTOCOL_FEATURES")
        }
        try setOwner()
        try setFeatures(offered.intersection(wanted))
        return queues
    }

    /// The vhost_dev_start part: SET_MEM_TABLE, then per ring SET_VRING_NUM, SET_VRING_BASE,
    /// SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL, then SET_VRING_ENABLE 1 for each (when
    /// protocol features were negotiated; otherwise rings start enabled, per the spec).
    /// `rings[i]` is the driver queue for vring index i.
    public func startQueues(memory: SharedGuestMemory, rings: [DriverSplitQueue], blockingCalls: Bool = false) throws {
        try setMemTable(memory)
        for (index, ring) in rings.enumerated() {
            try setVringNum(index, UInt32(ring.size))
            try setVringBase(index, ring.availIndex)
            try setVringAddr(ring.vringAddress(index: UInt32(index)))
            try setVringKick(index)
            try setVringCall(index, nonblocking: !blockingCalls)
        }
        if offeredFeatures?.contains(.protocolFeatures) ?? true {
            for index in rings.indices { try setVringEnable(index, true) }
        }
    }

    // MARK: - Notifications

    /// Kicks ring `index` (writes its kick eventfd).
    public func kick(_ index: Int) {
        guard let fd = kickFDs[index] else { preconditionFailure("driver bug: ring \(index) has no kick fd") }
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Waits up to `timeout` seconds for ring `index`'s call eventfd; consumes the count.
    /// Returns whether the backend signalled.
    public func waitForCall(_ index: Int, timeout: Double) -> Bool {
        guard let fd = callFDs[index] else { preconditionFailure("driver bug: ring \(index) has no call fd") }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let r = poll(&p, 1, Int32(max(0, timeout * 1000)))
        guard r > 0 else { return false }
        var counter: UInt64 = 0
        _ = read(fd, &counter, 8)
        return true
    }

    /// Waits until `ring` (vring `index`) has `count` used elements for the driver, the way a
    /// driver with EVENT_IDX does: arm used_event, re-check, then sleep on the call eventfd.
    /// A device that never signals makes this time out.
    public func waitForUsed(_ ring: DriverSplitQueue, index: Int, count: Int, timeout: Double = 5) throws -> [UsedElement] {
        var collected: [UsedElement] = []
        let deadline = monotonicSeconds() + timeout
        while collected.count < count {
            while collected.count < count, let e = ring.popUsed() { collected.append(e) }
            if collected.count == count { break }
            if ring.armUsedEvent() { continue }
            let remaining = deadline - monotonicSeconds()
            if remaining <= 0 || !waitForCall(index, timeout: remaining) {
                if ring.usedIndex != ring.lastUsedIndex {
                    // used_event asked for an interrupt (virtio v1.2 §2.7.10) and none came.
                    throw DriverError.protocolError("ring \(index): used elements published without an interrupt")
                }
                throw DriverError.timeout("\(collected.count) of \(count) used elements on ring \(index)")
            }
        }
        return collected
    }
}
