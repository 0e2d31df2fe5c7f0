// @testable imports need a debug build (SwiftPM compiles debug modules with testing
// enabled); in a release build the entry points that drive internal product types trap.
#if DEBUG
import Dispatch
import Glibc
import SCSICore
import Synchronization
@testable import VhostUserBackend
@testable import VhostUserSCSI
import VirtioCore
import VirtioSCSI

/// The state fake SCSI sessions share with the fuzz input being run: the guest memory every
/// iovec must lie in, the bytes that script the sessions' answers, and how many completions
/// and replies are queued but not delivered yet.
final class FuzzSCSIEnvironment: Sendable {
    private struct State {
        var memory: FuzzGuestMemory?
        var script: [UInt8] = []
        var cursor = 0
        var hold = false
        var scheduled = 0
        var submitted = 0
    }
    private let state = Mutex(State())

    func begin(memory: FuzzGuestMemory?, script: [UInt8], hold: Bool) {
        state.withLock { $0 = State(memory: memory, script: script, hold: hold) }
    }

    func end() { state.withLock { $0 = State() } }

    /// The next script byte (cycling; 0 with no script).
    func next() -> UInt8 {
        state.withLock { s in
            guard !s.script.isEmpty else { return 0 }
            defer { s.cursor += 1 }
            return s.script[s.cursor % s.script.count]
        }
    }

    var memory: FuzzGuestMemory? { state.withLock { $0.memory } }
    var hold: Bool { state.withLock { $0.hold } }
    var scheduled: Int { state.withLock { $0.scheduled } }
    var submitted: Int { state.withLock { $0.submitted } }
    func schedule() { state.withLock { $0.scheduled += 1 } }
    func delivered() { state.withLock { $0.scheduled -= 1 } }
    func countSubmit() { state.withLock { $0.submitted += 1 } }
}

/// A SCSI target session that checks every command it is given (CDB size, LUN, iovecs in
/// guest memory adding up to the transfer length), touches every byte of its buffers, and
/// answers as the fuzz script says: any status, sense of any length, any residual, or an
/// abort, reset or transport failure. Completions arrive asynchronously on the session's
/// queue after `flush`, or (holding) only when a TMF aborts them or the harness releases them.
final class FuzzSCSISession: SCSITargetSession, @unchecked Sendable {
    // @unchecked: confined to `queue`, like a real session.
    weak var completionSink: SCSICompletionSink?
    let queue: DispatchQueue
    let backendLUN: UInt16
    let environment: FuzzSCSIEnvironment
    private var outstanding: [Int: UInt16] = [:]
    private var unflushed: [Int] = []

    init(queue: DispatchQueue, backendLUN: UInt16, environment: FuzzSCSIEnvironment) {
        self.queue = queue
        self.backendLUN = backendLUN
        self.environment = environment
    }

    func submit(_ command: SCSICommand, token: Int) -> Bool {
        dispatchPrecondition(condition: .onQueue(queue))
        precondition(outstanding[token] == nil, "token \(token) submitted twice")
        precondition((1...VirtioSCSIConfig.cdbSize).contains(command.cdb.count), "CDB of \(command.cdb.count) bytes")
        precondition(command.lun == backendLUN, "command for LUN \(command.lun) on the session of LUN \(backendLUN)")
        // Without a fuzz memory (the connection fuzzer maps guest RAM through the server), the
        // buffers are only touched: a byte outside any mapping faults.
        let memory = environment.memory
        var total = 0
        var checksum: UInt8 = 0
        for v in command.buffers {
            precondition(v.iov_len > 0, "empty iovec")
            guard let base = v.iov_base, memory?.contains(base, length: v.iov_len) ?? true else {
                preconditionFailure("iovec of \(v.iov_len) bytes outside guest memory")
            }
            switch command.direction {
            case .toDevice:
                for b in UnsafeRawBufferPointer(start: base, count: v.iov_len) { checksum &+= b }
            case .fromDevice:
                base.initializeMemory(as: UInt8.self, repeating: 0x5A, count: v.iov_len)
            case .none:
                preconditionFailure("buffers for a command without data")
            }
            total += v.iov_len
        }
        _ = checksum
        precondition(total == command.transferLength, "iovecs of \(total) bytes for a transfer of \(command.transferLength)")
        environment.countSubmit()
        if environment.next() == 0xFF { return false }  // the session is gone
        outstanding[token] = command.lun
        unflushed.append(token)
        return true
    }

    func flush() {
        dispatchPrecondition(condition: .onQueue(queue))
        guard !environment.hold else { return }
        let tokens = unflushed
        unflushed = []
        for token in tokens { deliverLater(token) }
    }

    private func deliverLater(_ token: Int) {
        environment.schedule()
        queue.async { [self] in
            complete(token, aborted: false)
            environment.delivered()
        }
    }

    private func complete(_ token: Int, aborted: Bool) {
        guard outstanding.removeValue(forKey: token) != nil else { return }
        unflushed.removeAll { $0 == token }
        let choice = environment.next()
        let outcome: SCSITransportOutcome
        if aborted {
            outcome = .aborted
        } else {
            switch choice & 0x7 {
            case 5: outcome = .aborted
            case 6: outcome = .reset
            case 7: outcome = .transportFailure
            default: outcome = .completed
            }
        }
        let status = SCSIStatus(rawValue: environment.next())
        let senseLength = Int(environment.next())
        let sense = [UInt8](repeating: 0x70, count: senseLength)
        let residual: Int
        switch choice >> 6 {
        case 0: residual = 0
        case 1: residual = Int(environment.next()) << 4
        case 2: residual = -Int(environment.next()) - 1
        default: residual = Int.max >> Int(environment.next() & 7)
        }
        sense.withUnsafeBytes {
            completionSink?.scsiCommandCompleted(token: token, SCSICompletion(outcome: outcome, status: status, sense: $0,
                                                                              residual: residual))
        }
    }

    func taskManagement(_ function: SCSITaskManagementFunction, lun: UInt16,
                        reply: @escaping (SCSITaskManagementResponse) -> Void) {
        dispatchPrecondition(condition: .onQueue(queue))
        precondition(lun == backendLUN, "TMF for LUN \(lun) on the session of LUN \(backendLUN)")
        let victims: [Int]
        switch function {
        case .abortTask(let token): victims = outstanding[token] != nil ? [token] : []
        case .abortTaskSet, .clearTaskSet, .logicalUnitReset, .abortTaskSetAfterLogicalUnitReset, .targetWarmReset:
            victims = Array(outstanding.keys)
        case .clearACA, .queryTask, .queryTaskSet: victims = []
        }
        for token in victims { complete(token, aborted: true) }
        let responses: [SCSITaskManagementResponse] = [.functionComplete, .functionSucceeded, .functionRejected,
                                                       .incorrectLUN, .failed]
        let response = responses[Int(environment.next()) % responses.count]
        environment.schedule()
        let box = UncheckedBox(reply)
        queue.async { [environment] in
            box.value(response)
            environment.delivered()
        }
    }

    func isOutstanding(token: Int) -> Bool { outstanding[token] != nil }

    /// Completes everything still held (end of a fuzz input).
    func releaseAll() {
        dispatchPrecondition(condition: .onQueue(queue))
        unflushed = []
        for token in outstanding.keys.sorted() { deliverLater(token) }
    }

    func close() {
        for token in outstanding.keys.sorted() { complete(token, aborted: true) }
    }
}

struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// One `VirtioSCSIDevice` for the whole fuzzing process (a server keeps its device across
/// connections too): two request queues, LUNs 0:0 (backend LUN 0) and 0:300 (backend LUN 7).
final class FuzzDeviceHarness: @unchecked Sendable {
    // @unchecked: used by one fuzz input at a time (libFuzzer runs inputs one after another).
    static let shared = FuzzDeviceHarness()

    static let units: [(address: VirtioSCSIAddress, backendLUN: UInt16)] = [
        (VirtioSCSIAddress(target: 0, lun: 0), 0),
        (VirtioSCSIAddress(target: 0, lun: 300), 7),
    ]
    let environment = FuzzSCSIEnvironment()
    let device: VirtioSCSIDevice
    private let sessions = SessionList()

    private init() {
        let environment = self.environment
        let sessions = self.sessions
        let units = Self.units
        device = VirtioSCSIDevice(lunMap: LUNMap(units), requestQueues: 2) { backend, queue, _ in
            let session = FuzzSCSISession(queue: queue, backendLUN: units[backend].backendLUN, environment: environment)
            sessions.append(session)
            return session
        }
    }

    private final class SessionList: Sendable {
        private let list = Mutex<[UncheckedBox<FuzzSCSISession>]>([])
        func append(_ s: FuzzSCSISession) { list.withLock { $0.append(UncheckedBox(s)) } }
        var all: [FuzzSCSISession] { list.withLock { $0.map(\.value) } }
    }

    var queues: [DispatchQueue] { (0..<device.queueCount).map { device.dispatchQueue(forVring: $0) } }

    /// A started ring over `placement` in `memory`, as FrontendConnection starts one.
    func start(vring index: Int, placement: RingPlacement, memory: FuzzGuestMemory, nextAvail: UInt16,
               features: VirtioFeatures) -> Vring {
        let ring = placement.queue(in: memory, nextAvail: nextAvail, eventIndex: features.contains(.eventIndex),
                                   notifyOnEmpty: features.contains(.notifyOnEmpty))
        let vring = Vring(index: index, queue: device.dispatchQueue(forVring: index), ring: ring, memory: memory.memory,
                          negotiatedFeatures: features, notifier: CallNotifier())
        vring.queue.sync {
            device.start(vring)
            device.kick(vring)
        }
        return vring
    }

    /// Serialises the fuzz inputs that use the shared device (tests may run them in parallel).
    private let exclusive = Mutex(())

    func run(_ body: () -> Void) {
        exclusive.withLock { _ in body() }
    }

    /// Runs every queue until no completion or reply is pending (bounded: a device that never
    /// goes quiet is a bug).
    func quiesce() {
        var quietRounds = 0
        for _ in 0..<10_000 {
            for q in queues { q.sync {} }
            if environment.scheduled == 0 {
                quietRounds += 1
                if quietRounds >= 3 { return }
            } else {
                quietRounds = 0
            }
        }
        preconditionFailure("the device never went quiet")
    }

    /// Completes every held command.
    func releaseHeld() {
        for session in sessions.all { session.queue.sync { session.releaseAll() } }
    }

    /// Stops `vring` the way GET_VRING_BASE does and requires it to drain: once every
    /// command has completed (the device is quiet), every request taken from the ring must
    /// have been answered and the drain reported. Returns (heads taken, used elements added).
    func stop(_ vring: Vring, usedBefore: UInt16, availBefore: UInt16,
              availRing: UnsafeRawPointer) -> (taken: Int, used: Int, broken: Bool)? {
        let drained = DispatchSemaphore(value: 0)
        vring.queue.sync { device.stop(vring) { drained.signal() } }
        quiesce()
        if drained.wait(timeout: .now() + .seconds(1)) == .timedOut {
            preconditionFailure("vring \(vring.index) did not drain although every command completed "
                                + "(GET_VRING_BASE would wait for the drain timeout)")
        }
        return vring.queue.sync {
            let ring = vring.ring
            // Whether the guest broke the ring (the device then ignores it, and drops the
            // answers of requests it had taken): avail->idx too far ahead, or the last head
            // taken out of range.
            let availIdx = UInt16(littleEndian: (availRing + 2).loadUnaligned(as: UInt16.self))
            var broken = availIdx &- ring.nextAvail > ring.size
            if ring.nextAvail != availBefore {
                let slot = Int((ring.nextAvail &- 1) & (ring.size &- 1))
                broken = broken || UInt16(littleEndian: (availRing + 4 + 2 * slot).loadUnaligned(as: UInt16.self)) >= ring.size
            }
            return (Int(ring.nextAvail &- availBefore), Int(ring.nextUsed &- usedBefore), broken)
        }
    }
}

/// The used index the guest left in a ring (the device starts from it).
func initialUsedIndex(_ placement: RingPlacement, _ memory: FuzzGuestMemory) -> UInt16 {
    UInt16(littleEndian: (memory.regions[0].base + placement.usedOffset + 2).loadUnaligned(as: UInt16.self))
}
#endif
