import Dispatch
import Glibc
import SCSICore
import Synchronization

/// An in-memory disk of 512-byte blocks shared by every session of one logical unit.
public final class InMemoryDisk: Sendable {
    public static let blockSize = 512
    public let blockCount: Int
    private let storage: Mutex<[UInt8]>

    public init(blocks: Int = 4096) {
        blockCount = blocks
        storage = Mutex([UInt8](repeating: 0, count: blocks * Self.blockSize))
    }

    public func read(block: Int, count: Int) -> [UInt8] {
        storage.withLock { Array($0[block * Self.blockSize..<(block + count) * Self.blockSize]) }
    }

    public func write(block: Int, _ bytes: [UInt8]) {
        storage.withLock { $0.replaceSubrange(block * Self.blockSize..<block * Self.blockSize + bytes.count, with: bytes) }
    }
}

/// One command as the target saw it.
public struct RecordedCommand: Sendable, Equatable {
    public var backend: Int
    public var lun: UInt16
    public var cdb: [UInt8]
    public var direction: SCSIDataDirection
    public var transferLength: Int
    public var token: Int
    public var opcode: UInt8 { cdb.first ?? 0xFF }
}

/// One task management call as the target saw it.
public struct RecordedTaskManagement: Sendable, Equatable {
    public var backend: Int
    public var function: SCSITaskManagementFunction
    public var lun: UInt16
    public var response: SCSITaskManagementResponse
    /// Tokens of the held commands it aborted.
    public var aborted: [Int]
}

/// The shared state of every `RecordingSCSITarget` a device made: one disk per configured
/// logical unit, the record of commands and TMFs, and a "hold" switch that keeps commands in
/// flight until `releaseAll()`. Thread-safe.
public final class RecordingSCSIBackend: Sendable {
    private struct State {
        var commands: [RecordedCommand] = []
        var taskManagement: [RecordedTaskManagement] = []
        var holding = false
        var delay: DispatchTimeInterval? = nil
        var refuseSessions = false
        var sessions: [RecordingSCSITarget] = []
    }

    public let disks: [InMemoryDisk]
    private let state = Mutex(State())

    /// `units` logical units with a disk of `blocks` blocks each.
    public init(units: Int, blocks: Int = 4096) {
        disks = (0..<units).map { _ in InMemoryDisk(blocks: blocks) }
    }

    /// A factory with the signature of VhostUserSCSI's `SCSISessionFactory`.
    public var sessionFactory: @Sendable (Int, DispatchQueue, Int) throws -> SCSITargetSession {
        { [self] backend, queue, _ in
            if state.withLock({ $0.refuseSessions }) { throw RefusedSession(backend: backend) }
            return makeSession(backend: backend, queue: queue)
        }
    }

    /// What `sessionFactory` throws while sessions are refused.
    public struct RefusedSession: Error, CustomStringConvertible {
        public var backend: Int
        public var description: String { "test target refuses a session for unit \(backend)" }
    }

    /// While true, `sessionFactory` throws (a target that cannot be logged in to).
    public func refuseSessions(_ refuse: Bool) { state.withLock { $0.refuseSessions = refuse } }

    public func makeSession(backend: Int, queue: DispatchQueue) -> RecordingSCSITarget {
        let session = RecordingSCSITarget(backend: backend, queue: queue, disk: disks[backend], recorder: self)
        state.withLock { $0.sessions.append(session) }
        return session
    }

    public var sessions: [RecordingSCSITarget] { state.withLock { $0.sessions } }
    public var commands: [RecordedCommand] { state.withLock { $0.commands } }
    public var taskManagementCalls: [RecordedTaskManagement] { state.withLock { $0.taskManagement } }

    /// From now on commands stay in flight until `releaseAll()` (or a TMF aborts them).
    public func hold() { state.withLock { $0.holding = true } }

    /// Completes every held command (on its session's queue) and stops holding.
    public func releaseAll() {
        let sessions = state.withLock { s -> [RecordingSCSITarget] in
            s.holding = false
            return s.sessions
        }
        for session in sessions { session.queue.async { session.releaseHeld() } }
    }

    /// Every command completes this long after it was submitted (nil: at once, asynchronously).
    public func setDelay(_ delay: DispatchTimeInterval?) { state.withLock { $0.delay = delay } }

    /// Number of commands held right now, over all sessions (asks each session's queue).
    public var heldCount: Int { sessions.reduce(0) { n, s in n + s.queue.sync { s.heldTokens.count } } }

    /// Waits (bounded) until `count` commands have been submitted in all.
    public func waitForCommands(_ count: Int, timeout: Double = 5) -> Bool {
        waitUntil(timeout: timeout) { state.withLock { $0.commands.count } >= count }
    }

    fileprivate func record(_ c: RecordedCommand) -> (hold: Bool, delay: DispatchTimeInterval?) {
        state.withLock { s in
            s.commands.append(c)
            return (s.holding, s.delay)
        }
    }

    fileprivate func record(_ t: RecordedTaskManagement) { state.withLock { $0.taskManagement.append(t) } }
}

/// A `SCSITargetSession` over an `InMemoryDisk`: executes TEST UNIT READY, INQUIRY, READ
/// CAPACITY(10/16), READ(10/16) and WRITE(10/16) against the iovecs it is given, records every
/// command, and completes asynchronously on its queue (optionally after a delay, or only when
/// released). Task management aborts held commands, completing them with `.aborted` before
/// the reply. Confined to `queue`, like a real session.
public final class RecordingSCSITarget: SCSITargetSession, @unchecked Sendable {
    // @unchecked: confined to `queue` (the request queue that made it).
    public let backend: Int
    public let queue: DispatchQueue
    public weak var completionSink: SCSICompletionSink?
    let disk: InMemoryDisk
    let recorder: RecordingSCSIBackend

    private struct Pending {
        var lun: UInt16
        var cdb: [UInt8]
        var direction: SCSIDataDirection
        var buffers: UnsafeMutableBufferPointer<iovec>
        var transferLength: Int
    }
    private var outstanding: [Int: Pending] = [:]
    private(set) var heldTokens: [Int] = []
    private var closed = false
    public private(set) var flushCount = 0
    /// What `sessionCounters` reports (a real session counts reconnects and failures); set on
    /// `queue`.
    public var simulatedCounters = SCSISessionCounters()
    public var sessionCounters: SCSISessionCounters { simulatedCounters }

    init(backend: Int, queue: DispatchQueue, disk: InMemoryDisk, recorder: RecordingSCSIBackend) {
        self.backend = backend
        self.queue = queue
        self.disk = disk
        self.recorder = recorder
    }

    public func submit(_ command: SCSICommand, token: Int) -> Bool {
        dispatchPrecondition(condition: .onQueue(queue))
        guard !closed else { return false }
        precondition(outstanding[token] == nil, "token \(token) submitted twice")
        let pending = Pending(lun: command.lun, cdb: Array(command.cdb), direction: command.direction,
                              buffers: command.buffers, transferLength: command.transferLength)
        outstanding[token] = pending
        let (hold, delay) = recorder.record(RecordedCommand(backend: backend, lun: command.lun, cdb: pending.cdb,
                                                            direction: command.direction,
                                                            transferLength: command.transferLength, token: token))
        if hold {
            heldTokens.append(token)
        } else if let delay {
            queue.asyncAfter(deadline: .now() + delay) { [self] in complete(token) }
        } else {
            queue.async { [self] in complete(token) }
        }
        return true
    }

    public func flush() { flushCount += 1 }

    public func isOutstanding(token: Int) -> Bool { outstanding[token] != nil }

    public func taskManagement(_ function: SCSITaskManagementFunction, lun: UInt16,
                               reply: @escaping (SCSITaskManagementResponse) -> Void) {
        dispatchPrecondition(condition: .onQueue(queue))
        let victims: [Int]
        switch function {
        case .abortTask(let token):
            victims = heldTokens.filter { $0 == token }
        case .abortTaskSet, .clearTaskSet, .logicalUnitReset, .abortTaskSetAfterLogicalUnitReset, .targetWarmReset:
            victims = heldTokens.filter { outstanding[$0]?.lun == lun }
        case .clearACA, .queryTask, .queryTaskSet:
            victims = []
        }
        let resets = [.logicalUnitReset, .abortTaskSetAfterLogicalUnitReset, .targetWarmReset].contains(function)
        for token in victims { abort(token, outcome: resets ? .reset : .aborted) }
        let response: SCSITaskManagementResponse
        switch function {
        case .queryTask(let token): response = outstanding[token] != nil ? .functionSucceeded : .functionComplete
        case .queryTaskSet: response = outstanding.values.contains { $0.lun == lun } ? .functionSucceeded : .functionComplete
        default: response = .functionComplete
        }
        recorder.record(RecordedTaskManagement(backend: backend, function: function, lun: lun, response: response,
                                               aborted: victims))
        // Queued after the aborted completions (which were delivered synchronously above).
        let box = UncheckedSendable(reply)
        queue.async { box.value(response) }
    }

    public func close() {
        dispatchPrecondition(condition: .onQueue(queue))
        closed = true
        for token in heldTokens { abort(token, outcome: .aborted) }
    }

    /// Completes every held command, in submission order.
    func releaseHeld() {
        let tokens = heldTokens
        heldTokens = []
        for token in tokens { complete(token) }
    }

    private func abort(_ token: Int, outcome: SCSITransportOutcome) {
        heldTokens.removeAll { $0 == token }
        guard outstanding.removeValue(forKey: token) != nil else { return }
        completionSink?.scsiCommandCompleted(token: token, SCSICompletion(outcome: outcome, status: .taskAborted))
    }

    private func complete(_ token: Int) {
        guard let command = outstanding.removeValue(forKey: token) else { return }  // aborted meanwhile
        let result = execute(command)
        result.sense.withUnsafeBytes { sense in
            completionSink?.scsiCommandCompleted(token: token, SCSICompletion(outcome: .completed, status: result.status,
                                                                              sense: sense, residual: result.residual))
        }
    }

    // MARK: - The disk

    private struct Result {
        var status: SCSIStatus = .good
        var sense: [UInt8] = []
        var residual = 0
    }

    private static func checkCondition(_ sense: FixedSenseData, residual: Int) -> Result {
        Result(status: .checkCondition, sense: sense.bytes, residual: residual)
    }

    private func execute(_ c: Pending) -> Result {
        let cdb = c.cdb
        func be(_ range: Range<Int>) -> Int { range.reduce(0) { $0 << 8 | Int(cdb[$1]) } }
        switch cdb[0] {
        case SCSIOpcode.testUnitReady:
            return Result(residual: c.transferLength)
        case SCSIOpcode.inquiry:
            guard cdb[1] & 1 == 0 else { return Self.checkCondition(.invalidFieldInCDB, residual: c.transferLength) }
            var data = [UInt8](repeating: 0x20, count: 36)
            data[0] = 0x00; data[1] = 0; data[2] = 0x06; data[3] = 0x02; data[4] = 31; data[5] = 0; data[6] = 0; data[7] = 0x02
            data.replaceSubrange(8..<16, with: Array("TESTVEND".utf8))
            data.replaceSubrange(16..<32, with: Array("RECORDING DISK  ".utf8))
            data.replaceSubrange(32..<36, with: Array("0001".utf8))
            return dataIn(data, allocation: be(3..<5), c)
        case 0x25:  // READ CAPACITY(10)
            var data: [UInt8] = []
            appendBE(UInt32(disk.blockCount - 1), to: &data)
            appendBE(UInt32(InMemoryDisk.blockSize), to: &data)
            return dataIn(data, allocation: 8, c)
        case 0x9E where cdb[1] & 0x1F == 0x10:  // SERVICE ACTION IN(16) / READ CAPACITY(16)
            var data: [UInt8] = []
            appendBE(UInt64(disk.blockCount - 1), to: &data)
            appendBE(UInt32(InMemoryDisk.blockSize), to: &data)
            data += [UInt8](repeating: 0, count: 20)
            return dataIn(data, allocation: be(10..<14), c)
        case SCSIOpcode.read10, SCSIOpcode.read16, SCSIOpcode.write10, SCSIOpcode.write16:
            let sixteen = cdb[0] == SCSIOpcode.read16 || cdb[0] == SCSIOpcode.write16
            let lba = sixteen ? be(2..<10) : be(2..<6)
            let blocks = sixteen ? be(10..<14) : be(7..<9)
            guard lba >= 0, lba + blocks <= disk.blockCount else {
                return Self.checkCondition(FixedSenseData(key: .illegalRequest, asc: 0x21, ascq: 0), residual: c.transferLength)
            }
            let bytes = blocks * InMemoryDisk.blockSize
            if cdb[0] == SCSIOpcode.read10 || cdb[0] == SCSIOpcode.read16 {
                return dataIn(disk.read(block: lba, count: blocks), allocation: bytes, c)
            }
            let data = gather(c.buffers, count: min(bytes, c.transferLength))
            disk.write(block: lba, data)
            return Result(residual: c.transferLength - data.count)
        default:
            return Self.checkCondition(.invalidCommandOperationCode, residual: c.transferLength)
        }
    }

    private func dataIn(_ data: [UInt8], allocation: Int, _ c: Pending) -> Result {
        let length = min(data.count, allocation, c.transferLength)
        let written = data.withUnsafeBytes { scatter(UnsafeRawBufferPointer(rebasing: $0[0..<length]), into: c.buffers) }
        return Result(residual: c.transferLength - written)
    }

    // SAFETY: the iovecs point into guest memory that the device keeps mapped until the
    // command completes, and each copy stays within one iovec's length.
    private func scatter(_ data: UnsafeRawBufferPointer, into buffers: UnsafeMutableBufferPointer<iovec>) -> Int {
        var done = 0
        for v in buffers where done < data.count {
            let n = min(v.iov_len, data.count - done)
            v.iov_base.copyMemory(from: data.baseAddress! + done, byteCount: n)
            done += n
        }
        return done
    }

    private func gather(_ buffers: UnsafeMutableBufferPointer<iovec>, count: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        for v in buffers where out.count < count {
            let n = min(v.iov_len, count - out.count)
            out.append(contentsOf: UnsafeRawBufferPointer(start: v.iov_base, count: n))
        }
        return out
    }
}

@inline(__always)
func appendBE<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
    withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
}

/// Carries a value confined to one queue across a `queue.async` onto that same queue.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
