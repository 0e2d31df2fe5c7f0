import Dispatch
import SCSICore
import ServerLog
import ServerMetrics
import VhostUserBackend
import VirtioCore
import VirtioSCSI

/// Serves one virtio-scsi request queue: takes chains off the ring, turns them into SCSI
/// commands for the logical unit they address and completes them onto the used ring.
/// Confined to `queue`; the SCSI sessions it uses are confined to the same queue, so a
/// completion is pushed without any hop or lock.
final class RequestQueueWorker: SCSICompletionSink, @unchecked Sendable {
    // @unchecked: confined to `queue`.
    static let maxOutstanding = 1024

    let queue: DispatchQueue
    let lunMap: LUNMap
    let sessionFactory: SCSISessionFactory
    private var sessions: [SCSITargetSession?]
    private var sessionRetryAfter: [DispatchTime]
    private var vring: Vring?
    private var slots: [RequestSlot] = []
    private var freeSlots: [Int] = []
    private var inFlight = 0
    private var starved = false
    /// The guest broke the ring (avail index out of range, head out of range): nothing more is
    /// taken from it until it restarts; requests already taken still complete and drain.
    private var broken = false
    /// Completions pushed whose interrupt waits for the end of their session's batch.
    private var notifyPending = false
    private var drained: (@Sendable () -> Void)?
    /// Bumped on every start and abandon, so a completion of an older ring never touches
    /// the current one.
    private var generation = 0

    // Statistics (Docs/OBSERVABILITY.md): plain counters confined to `queue`, so the data path
    // takes no lock and allocates nothing; a timer on `queue` copies them into
    // `statisticsCell` once a second for readers on other threads.
    static let statisticsInterval = DispatchTimeInterval.seconds(1)
    private let meters = QueueMeters(tokens: RequestQueueWorker.maxOutstanding)
    /// Per backend: what closed sessions counted, and sessions that could not be made.
    private var closedSessionCounters: [SCSISessionCounters]
    private var loginFailures: [UInt64]
    let statisticsCell = StatisticsCell(QueueStatistics(queue: 0))
    private var statisticsTimer: DispatchSourceTimer?

    init(queue: DispatchQueue, lunMap: LUNMap, backendCount: Int, sessionFactory: @escaping SCSISessionFactory) {
        self.queue = queue
        self.lunMap = lunMap
        self.sessionFactory = sessionFactory
        sessions = Array(repeating: nil, count: backendCount)
        sessionRetryAfter = Array(repeating: .now(), count: backendCount)
        closedSessionCounters = Array(repeating: SCSISessionCounters(), count: backendCount)
        loginFailures = Array(repeating: 0, count: backendCount)
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + Self.statisticsInterval, repeating: Self.statisticsInterval,
                       leeway: .milliseconds(100))
        timer.setEventHandler { [weak self] in self?.publishStatistics() }
        timer.activate()
        statisticsTimer = timer
    }

    deinit { statisticsTimer?.cancel() }

    // MARK: - Ring lifecycle (called by the device on `queue`)

    func start(_ vring: Vring) {
        self.vring = vring
        drained = nil
        generation &+= 1
        let wanted = min(Int(vring.ring.size), Self.maxOutstanding)
        if slots.count < wanted {
            for token in slots.count..<wanted { slots.append(RequestSlot(token: token)) }
        }
        // Commands of an abandoned ring may still be outstanding: their slots stay taken.
        freeSlots = slots[0..<wanted].filter { $0.backend < 0 }.map(\.token).reversed()
        inFlight = 0
        starved = false
        broken = false
        for backend in sessions.indices where sessions[backend] == nil {
            _ = session(for: backend)
        }
    }

    func stop(drained: @escaping @Sendable () -> Void) {
        scsiCompletionBatchEnded()
        if inFlight == 0 {
            vring = nil
            drained()
        } else {
            Log.info("ring \(vring?.index ?? -1): draining \(inFlight) in-flight request(s) before stopping")
            self.drained = drained
        }
    }

    /// See `VhostUserDevice.abandon`: stop touching the ring, abort what is in flight; the
    /// completions that still come only free their slots.
    func abandon() {
        vring = nil
        drained = nil
        generation &+= 1
        for slot in slots where slot.backend >= 0 {
            sessions[slot.backend]?.taskManagement(.abortTask(token: slot.token), lun: lunMap.backendLUN(slot.backend)) { _ in }
        }
        for case let session? in sessions { session.flush() }
    }

    /// Logs out of every session (server shutdown).
    func closeSessions() {
        for backend in sessions.indices {
            guard let session = sessions[backend] else { continue }
            session.close()
            closedSessionCounters[backend] = closedSessionCounters[backend] + session.sessionCounters
        }
        sessions = sessions.map { _ in nil }
    }

    // MARK: - Requests

    func kick() {
        guard let vring, drained == nil, !broken else { return }
        meters.submissionBatchStarted()
        var pushedNow = false
        defer {
            for case let session? in sessions { session.flush() }
            if pushedNow { vring.publishUsedAndNotify() }
        }
        outer: while true {
            while true {
                guard let slotIndex = freeSlots.last else {
                    starved = true
                    break outer
                }
                let head: UInt16?
                do {
                    head = try vring.pop()
                } catch {
                    Log.error("ring \(vring.index): \(error); the ring is ignored until it is restarted")
                    broken = true
                    return
                }
                guard let head else { break }
                freeSlots.removeLast()
                if !begin(slots[slotIndex], head: head, vring: vring) {
                    pushedNow = true
                }
            }
            if !vring.enableKicks() { break }
        }
    }

    /// Starts the request at `head`. Returns false when it was answered at once (pushed to
    /// the used ring, slot released), true when a SCSI command is now in flight.
    private func begin(_ slot: RequestSlot, head: UInt16, vring: Vring) -> Bool {
        slot.head = head
        do {
            try DescriptorChainWalker.walk(queue: vring.ring, head: head, memory: vring.memory, into: slot.chain)
        } catch {
            Log.error("ring \(vring.index): request \(head) refused: \(error)")
            finish(slot, vring: vring, usedLength: 0)
            return false
        }
        let chain = slot.chain
        guard chain.copyReadablePrefix(VirtioSCSICommandHeader.byteCount, to: slot.header.baseAddress!),
              chain.writableBytes >= VirtioSCSICommandResponse.byteCount else {
            Log.error("ring \(vring.index): request \(head) refused: \(chain.readableBytes) readable and "
                      + "\(chain.writableBytes) writable bytes are too few for virtio-scsi headers")
            finish(slot, vring: vring, usedLength: 0)
            return false
        }
        let header = VirtioSCSICommandHeader(UnsafeRawBufferPointer(slot.header))
        slot.id = header.id
        let dataOutLength = chain.readableBytes - VirtioSCSICommandHeader.byteCount
        slot.dataInLength = chain.writableBytes - VirtioSCSICommandResponse.byteCount
        guard let address = VirtioSCSIAddress(lunField: UnsafeRawBufferPointer(rebasing: slot.header[0..<8])),
              lunMap.hasTarget(address.target) else {
            respond(slot, vring: vring, response: .badTarget)
            return false
        }
        slot.address = address
        let cdb = slot.cdb
        if cdb[0] == SCSIOpcode.reportLUNs {
            respondLocally(slot, vring: vring, data: LocalResponses.reportLUNs(lunMap.luns(of: address.target)))
            return false
        }
        guard let backend = lunMap.backendIndex(for: address) else {
            respondForUnsupportedLUN(slot, vring: vring)
            return false
        }
        guard dataOutLength == 0 || slot.dataInLength == 0 else {
            // Bidirectional commands need VIRTIO_SCSI_F_INOUT, which is not offered.
            respond(slot, vring: vring, response: .failure)
            return false
        }
        guard let session = session(for: backend) else {
            respond(slot, vring: vring, response: .transportFailure)
            return false
        }
        slot.backend = backend
        slot.generation = generation
        slot.memory = vring.memory
        slot.iovecs.reset()
        let direction: SCSIDataDirection
        if dataOutLength > 0 {
            direction = .toDevice
            chain.collect(writable: false, skipping: VirtioSCSICommandHeader.byteCount, into: slot.iovecs)
        } else if slot.dataInLength > 0 {
            direction = .fromDevice
            chain.collect(writable: true, skipping: VirtioSCSICommandResponse.byteCount, into: slot.iovecs)
        } else {
            direction = .none
        }
        let cdbLength = min(CDB.length(opcode: cdb[0], additionalLength: cdb[7]) ?? 16, VirtioSCSIConfig.cdbSize)
        let command = SCSICommand(lun: lunMap.backendLUN(backend), cdb: UnsafeRawBufferPointer(rebasing: cdb[0..<cdbLength]),
                                  direction: direction, buffers: slot.iovecs.buffer,
                                  transferLength: max(dataOutLength, slot.dataInLength),
                                  taskAttribute: SCSITaskAttribute(rawValue: header.taskAttribute) ?? .simple)
        inFlight += 1
        meters.submitting(token: slot.token, dataOutLength: dataOutLength)
        guard session.submit(command, token: slot.token) else {
            inFlight -= 1
            slot.memory = nil
            respond(slot, vring: vring, response: .transportFailure)
            return false
        }
        return true
    }

    func scsiCommandCompleted(token: Int, _ completion: SCSICompletion) {
        let slot = slots[token]
        let backend = slot.backend
        slot.memory = nil
        guard slot.generation == generation, let vring else {
            // The ring was abandoned after a drain timeout: free the slot, touch nothing.
            slot.backend = -1
            if slot.token < Int(self.vring?.ring.size ?? 0) { freeSlots.append(slot.token) }
            return
        }
        inFlight -= 1
        let batched = sessions[backend]?.deliversCompletionsInBatches == true
        let dataOutLength = meters.completed(token: token, batched: batched)
        let response: VirtioSCSIResponse
        switch completion.outcome {
        case .completed: response = .ok
        case .aborted: response = .aborted
        case .reset: response = .reset
        case .transportFailure: response = .transportFailure
        }
        let residual = min(max(completion.residual, 0), max(slot.dataInLength, 0))
        let transferred = response == .ok ? slot.dataInLength - residual : 0
        let sent = response == .ok ? dataOutLength - min(max(completion.residual, 0), dataOutLength) : 0
        respond(slot, vring: vring, response: response, status: completion.status.rawValue,
                residual: UInt32(clamping: completion.residual), sense: completion.sense, dataIn: transferred, dataOut: sent)
        // One interrupt per batch of completions where the session batches them, but never
        // one after the drain has been reported.
        if drained == nil, batched {
            notifyPending = true
        } else {
            vring.publishUsedAndNotify()
        }
        if let drained, inFlight == 0 {
            Log.info("ring \(vring.index): drained")
            self.drained = nil
            self.vring = nil
            drained()
        } else if starved {
            starved = false
            queue.async { [self] in kick() }
        }
    }

    func scsiCompletionBatchEnded() {
        meters.completionBatchEnded()
        guard notifyPending else { return }
        notifyPending = false
        vring?.publishUsedAndNotify()
    }

    // MARK: - Answers

    private func respond(_ slot: RequestSlot, vring: Vring, response: VirtioSCSIResponse, status: UInt8 = 0,
                         residual: UInt32 = 0, sense: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                         dataIn: Int = 0, dataOut: Int = 0) {
        withUnsafeTemporaryAllocation(byteCount: VirtioSCSICommandResponse.byteCount, alignment: 8) { header in
            VirtioSCSICommandResponse.encode(response: response, status: status, residual: residual, sense: sense, into: header)
            slot.chain.writeWritable(at: 0, from: UnsafeRawBufferPointer(header))
        }
        // Response header and data-in were written: log them before the request is used.
        vring.logWrites(to: slot.chain, headerBytes: VirtioSCSICommandResponse.byteCount)
        meters.answered(opcode: slot.cdb[0], responseOK: response == .ok, status: status, bytesRead: dataIn, bytesWritten: dataOut)
        finish(slot, vring: vring, usedLength: UInt32(VirtioSCSICommandResponse.byteCount + dataIn))
    }

    private func respondLocally(_ slot: RequestSlot, vring: Vring, data: [UInt8], status: SCSIStatus = .good) {
        let allocation = LocalResponses.allocationLength(cdb: slot.cdb)
        let length = min(data.count, allocation, slot.dataInLength)
        let written = data.withUnsafeBytes {
            slot.chain.writeWritable(at: VirtioSCSICommandResponse.byteCount, from: UnsafeRawBufferPointer(rebasing: $0[0..<length]))
        }
        respond(slot, vring: vring, response: .ok, status: status.rawValue,
                residual: UInt32(slot.dataInLength - written), dataIn: written)
    }

    /// A LUN that is not configured on an existing target (SPC-4 §6.6.2, SAM-5 §5.8.4).
    private func respondForUnsupportedLUN(_ slot: RequestSlot, vring: Vring) {
        let cdb = slot.cdb
        switch cdb[0] {
        case SCSIOpcode.inquiry:
            respondLocally(slot, vring: vring, data: LocalResponses.inquiryForUnsupportedLUN(evpd: cdb[1] & 1 != 0, pageCode: cdb[2]))
        case SCSIOpcode.requestSense:
            respondLocally(slot, vring: vring, data: FixedSenseData.logicalUnitNotSupported.bytes)
        default:
            FixedSenseData.logicalUnitNotSupported.bytes.withUnsafeBytes { sense in
                respond(slot, vring: vring, response: .ok, status: SCSIStatus.checkCondition.rawValue,
                        residual: UInt32(slot.dataInLength), sense: sense)
            }
        }
    }

    @inline(__always)
    private func finish(_ slot: RequestSlot, vring: Vring, usedLength: UInt32) {
        // Only a refused request has no response header.
        if usedLength == 0 { meters.refused() }
        vring.push(head: slot.head, length: usedLength)
        slot.backend = -1
        freeSlots.append(slot.token)
    }

    // MARK: - Sessions

    private func session(for backend: Int) -> SCSITargetSession? {
        if let session = sessions[backend] { return session }
        guard DispatchTime.now() >= sessionRetryAfter[backend] else { return nil }
        do {
            let session = try sessionFactory(backend, queue, Self.maxOutstanding)
            session.completionSink = self
            sessions[backend] = session
            return session
        } catch {
            Log.error("LUN \(backend + 1): \(error)")
            loginFailures[backend] &+= 1
            sessionRetryAfter[backend] = .now() + .seconds(1)
            return nil
        }
    }

    // MARK: - Statistics

    /// Copies the counters into `statisticsCell`. On `queue`: the timer's, or a reader's
    /// `VirtioSCSIDevice.refreshStatistics`.
    func publishStatistics() {
        let units = lunMap.entries.sorted { ($0.key.target, $0.key.lun) < ($1.key.target, $1.key.lun) }
        let luns = units.map { address, backend in
            let counted = (sessions[backend]?.sessionCounters ?? SCSISessionCounters()) + closedSessionCounters[backend]
            return LUNStatistics(target: address.target, lun: address.lun, reconnects: counted.reconnects,
                                 connectionLosses: counted.connectionLosses, commandFailures: counted.commandFailures,
                                 loginFailures: loginFailures[backend])
        }
        statisticsCell.publish(QueueStatistics(queue: 0, counters: meters.counters, inFlight: inFlight, luns: luns))
    }

    // MARK: - Task management (called on `queue` by the control queue worker)

    /// Token of the outstanding command with virtio request `id` on `address`, if any.
    func outstandingToken(id: UInt64, address: VirtioSCSIAddress) -> Int? {
        guard inFlight > 0 else { return nil }
        for slot in slots where slot.backend >= 0 && slot.id == id && slot.address == address {
            if sessions[slot.backend]?.isOutstanding(token: slot.token) == true { return slot.token }
        }
        return nil
    }

    func hasOutstanding(on address: VirtioSCSIAddress) -> Bool {
        guard inFlight > 0 else { return false }
        return slots.contains { $0.backend >= 0 && $0.address == address }
    }

    /// Runs `function` on this queue's session for `backend`; nil reply when there is none.
    func taskManagement(_ function: SCSITaskManagementFunction, backend: Int,
                        reply: @escaping (SCSITaskManagementResponse?) -> Void) {
        guard let session = sessions[backend] else {
            reply(nil)
            return
        }
        session.taskManagement(function, lun: lunMap.backendLUN(backend)) { response in
            reply(response)
        }
        session.flush()
    }
}
