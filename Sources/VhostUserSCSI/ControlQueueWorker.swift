import Dispatch
import SCSICore
import ServerLog
import Synchronization
import VhostUserBackend
import VirtioCore
import VirtioSCSI

/// Serves the control queue (virtio v1.2 §5.6.6.2): task management functions are carried
/// out on the request queues' SCSI sessions, asynchronous notification requests answered.
/// Confined to `queue`. A TMF never waits on the ring: its answer is pushed when every
/// session involved has answered, so a guest reset always completes.
final class ControlQueueWorker: @unchecked Sendable {
    // @unchecked: confined to `queue`.
    let queue: DispatchQueue
    /// This queue's copy of the LUN map (see RequestQueueWorker.apply).
    private(set) var lunMap: LUNMap
    let requestWorkers: [RequestQueueWorker]
    private var vring: Vring?
    private var outstanding = 0
    private var drained: (@Sendable () -> Void)?
    /// Bumped on every start and abandon: a TMF answers only the ring it came from.
    private var generation = 0
    /// See RequestQueueWorker.broken.
    private var broken = false

    init(queue: DispatchQueue, lunMap: LUNMap, requestWorkers: [RequestQueueWorker]) {
        self.queue = queue
        self.lunMap = lunMap
        self.requestWorkers = requestWorkers
    }

    /// Takes a new LUN map; TMFs already under way finish on the units they named.
    func apply(_ map: LUNMap) {
        if map.version > lunMap.version { lunMap = map }
    }

    func start(_ vring: Vring) {
        self.vring = vring
        drained = nil
        generation &+= 1
        broken = false
    }

    func stop(drained: @escaping @Sendable () -> Void) {
        if outstanding == 0 {
            vring = nil
            drained()
        } else {
            self.drained = drained
        }
    }

    /// See `VhostUserDevice.abandon`: answers still to come are dropped.
    func abandon() {
        vring = nil
        drained = nil
        generation &+= 1
    }

    func kick() {
        guard let vring, drained == nil, !broken else { return }
        defer { vring.publishUsedAndNotify() }
        repeat {
            while true {
                let head: UInt16?
                do { head = try vring.pop() } catch {
                    Log.error("control queue: \(error); the ring is ignored until it is restarted")
                    broken = true
                    return
                }
                guard let head else { break }
                handle(head, vring: vring)
            }
        } while vring.enableKicks()
    }

    private func handle(_ head: UInt16, vring: Vring) {
        let chain = ChainSegmentBuffer()
        do {
            try DescriptorChainWalker.walk(queue: vring.ring, head: head, memory: vring.memory, into: chain)
        } catch {
            Log.error("control queue: request \(head) refused: \(error)")
            vring.push(head: head, length: 0)
            return
        }
        var request = [UInt8](repeating: 0, count: VirtioSCSITMFRequest.byteCount)
        let readable = min(chain.readableBytes, request.count)
        guard readable >= 4 else {
            Log.error("control queue: request \(head) refused: no request type")
            vring.push(head: head, length: 0)
            return
        }
        _ = request.withUnsafeMutableBytes { chain.copyReadablePrefix(readable, to: $0.baseAddress!) }
        let type = request.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
        switch VirtioSCSIControlType(rawValue: type) {
        case .taskManagement:
            guard readable >= VirtioSCSITMFRequest.byteCount, chain.writableBytes >= VirtioSCSITMFRequest.responseByteCount else {
                Log.error("control queue: TMF request \(head) is too short")
                vring.push(head: head, length: 0)
                return
            }
            let tmf = request.withUnsafeBytes { VirtioSCSITMFRequest($0) }
            outstanding += 1
            // The chain's memory must stay mapped until the answer is written.
            let memory = vring.memory
            let startedIn = generation
            taskManagement(tmf) { [self] response in
                _ = memory
                guard startedIn == generation else { return }
                outstanding -= 1
                defer {
                    if let drained, outstanding == 0 {
                        self.drained = nil
                        self.vring = nil
                        drained()
                    }
                }
                Log.info("control queue: TMF \(VirtioSCSITMFSubtype(rawValue: tmf.subtype).map { "\($0)" } ?? "\(tmf.subtype)") "
                         + "on \(tmf.address?.description ?? "?") answered \(response)")
                guard let vring = self.vring else { return }
                [response.rawValue].withUnsafeBytes { _ = chain.writeWritable(at: 0, from: $0) }
                vring.logWrites(to: chain, headerBytes: 1)
                vring.push(head: head, length: 1)
                vring.publishUsedAndNotify()
            }
        case .asyncNotificationQuery, .asyncNotificationSubscribe:
            guard readable >= VirtioSCSIANRequest.byteCount,
                  chain.writableBytes >= VirtioSCSIANRequest.responseByteCount else {
                Log.error("control queue: AN request \(head) is too short")
                vring.push(head: head, length: 0)
                return
            }
            // No asynchronous notification classes are supported: event_actual 0, S_OK.
            let answer: [UInt8] = [0, 0, 0, 0, VirtioSCSIResponse.ok.rawValue]
            answer.withUnsafeBytes { _ = chain.writeWritable(at: 0, from: $0) }
            vring.logWrites(to: chain, headerBytes: answer.count)
            vring.push(head: head, length: UInt32(answer.count))
        case nil:
            Log.error("control queue: request \(head) has unknown type \(type)")
            vring.push(head: head, length: 0)
        }
    }

    /// Carries out one TMF and calls `done` on `queue` with the virtio response code.
    private func taskManagement(_ tmf: VirtioSCSITMFRequest, done: @escaping @Sendable (VirtioSCSIResponse) -> Void) {
        guard let address = tmf.address else {
            done(.badTarget)
            return
        }
        let found = lunMap.lookup(address)
        guard found != .noTarget else {
            done(.badTarget)
            return
        }
        guard let subtype = VirtioSCSITMFSubtype(rawValue: tmf.subtype) else {
            done(.functionRejected)
            return
        }
        guard case .unit(let unit) = found else {
            done(.incorrectLUN)
            return
        }
        switch subtype {
        case .queryTask:
            collect(from: requestWorkers, { worker in worker.outstandingToken(id: tmf.id, unit: unit) != nil ? true : nil }) {
                done($0.isEmpty ? .functionComplete : .functionSucceeded)
            }
        case .queryTaskSet:
            collect(from: requestWorkers, { worker in worker.hasOutstanding(on: unit) ? true : nil }) {
                done($0.isEmpty ? .functionComplete : .functionSucceeded)
            }
        case .abortTask:
            forEachSession({ worker in
                worker.outstandingToken(id: tmf.id, unit: unit).map { SCSITaskManagementFunction.abortTask(token: $0) }
            }, unit: unit, done: done)
        case .abortTaskSet:
            forEachSession({ _ in .abortTaskSet }, unit: unit, done: done)
        case .clearTaskSet:
            forEachSession({ _ in .clearTaskSet }, unit: unit, done: done)
        case .clearACA:
            forEachSession({ _ in .clearACA }, unit: unit, done: done)
        case .logicalUnitReset:
            logicalUnitReset(unit: unit, done: done)
        case .itNexusReset:
            // iSCSI has no I_T nexus reset of its own; abort every task this initiator has on the LU.
            forEachSession({ _ in .abortTaskSet }, unit: unit, done: done)
        }
    }

    /// A LUN reset resets the logical unit for every I_T nexus, so it is sent on one session
    /// only: two resets of one LU at once on two sessions, with commands in flight, left tgt
    /// answering only one of them and the guest's reset hanging. The other sessions then run
    /// ABORT TASK SET, which completes locally whatever the reset aborted on their nexus (a
    /// target need not report those) and answers at once when nothing is left. Those commands
    /// complete VIRTIO_SCSI_S_RESET like the reset nexus's own: reported as ABORTED, Linux
    /// fails them with an I/O error instead of retrying them.
    private func logicalUnitReset(unit: LogicalUnit, done: @escaping @Sendable (VirtioSCSIResponse) -> Void) {
        resetOnFirstSession(from: 0, unit: unit) { [self] index, response in
            guard let index else {
                done(.functionComplete)  // no session to the LU yet: nothing to reset
                return
            }
            let others = requestWorkers.enumerated().filter { $0.offset != index }.map(\.element)
            guard response != .failed, !others.isEmpty else {
                done(Self.combine([response]))
                return
            }
            forEachSession({ _ in .abortTaskSetAfterLogicalUnitReset }, unit: unit, workers: others) { rest in
                done(rest == .failure ? .failure : Self.combine([response]))
            }
        }
    }

    /// Sends LUN RESET on the first request queue (from `index` on) that has a session to
    /// `unit`; `done` gets that queue's index (nil if none has one) and the answer, on `queue`.
    private func resetOnFirstSession(from index: Int, unit: LogicalUnit,
                                     done: @escaping @Sendable (Int?, SCSITaskManagementResponse) -> Void) {
        guard index < requestWorkers.count else {
            queue.async { done(nil, .functionComplete) }
            return
        }
        let worker = requestWorkers[index]
        worker.queue.async { [self] in
            worker.taskManagement(.logicalUnitReset, unit: unit) { response in
                if let response {
                    self.queue.async { done(index, response) }
                } else {
                    self.queue.async { self.resetOnFirstSession(from: index + 1, unit: unit, done: done) }
                }
            }
        }
    }

    /// Runs `function(worker)` on every request queue's session for `unit` (skipping
    /// those where it is nil) and combines the answers: the worst one wins.
    private func forEachSession(_ function: @escaping @Sendable (RequestQueueWorker) -> SCSITaskManagementFunction?,
                                unit: LogicalUnit, workers: [RequestQueueWorker]? = nil,
                                done: @escaping @Sendable (VirtioSCSIResponse) -> Void) {
        let group = DispatchGroup()
        let results = ResultBox()
        for worker in workers ?? requestWorkers {
            group.enter()
            worker.queue.async {
                guard let tmf = function(worker) else {
                    group.leave()
                    return
                }
                worker.taskManagement(tmf, unit: unit) { response in
                    if let response { results.append(response) }
                    group.leave()
                }
            }
        }
        group.notify(queue: queue) {
            done(Self.combine(results.values))
        }
    }

    private func collect(from workers: [RequestQueueWorker], _ body: @escaping @Sendable (RequestQueueWorker) -> Bool?,
                         done: @escaping @Sendable ([Bool]) -> Void) {
        let group = DispatchGroup()
        let results = ResultBox()
        for worker in workers {
            group.enter()
            worker.queue.async {
                if body(worker) != nil { results.append(.functionSucceeded) }
                group.leave()
            }
        }
        group.notify(queue: queue) { done(results.values.map { _ in true }) }
    }

    static func combine(_ responses: [SCSITaskManagementResponse]) -> VirtioSCSIResponse {
        if responses.contains(.failed) { return .failure }
        if responses.contains(.functionRejected) { return .functionRejected }
        if responses.contains(.incorrectLUN) { return .incorrectLUN }
        if responses.contains(.functionSucceeded) { return .functionSucceeded }
        return .functionComplete
    }
}

/// Collects answers from several queues.
private final class ResultBox: Sendable {
    private let storage = Mutex<[SCSITaskManagementResponse]>([])
    func append(_ r: SCSITaskManagementResponse) { storage.withLock { $0.append(r) } }
    var values: [SCSITaskManagementResponse] { storage.withLock { $0 } }
}
