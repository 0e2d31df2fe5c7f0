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
    /// This queue's copy of the LUN map; the device sends a new one on every change (`apply`).
    private(set) var lunMap: LUNMap
    let sessionFactory: SCSISessionFactory
    /// Indexed by logical unit id (`LogicalUnit.id`); nil for removed units.
    /// Behind a pointer held in a `let` (see RequestSlotPool): replacing a session may run its
    /// deinit, so a stored array `var` would be checked for exclusive access at run time on
    /// every read, two per request. Read through `sessions` (a copy; calls into sessions are
    /// made on copies), changed in place through `sessionTable.pointee` on this queue only.
    private let sessionTable: UnsafeMutablePointer<[SCSITargetSession?]>
    private var sessions: [SCSITargetSession?] { sessionTable.pointee }
    private var sessionRetryAfter: [DispatchTime]
    private var vring: Vring?
    private let slots = RequestSlotPool(capacity: RequestQueueWorker.maxOutstanding)
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
    /// Per unit id: what closed sessions counted, and sessions that could not be made.
    private var closedSessionCounters: [SCSISessionCounters]
    private var loginFailures: [UInt64]
    let statisticsCell = StatisticsCell(QueueStatistics(queue: 0))
    private var statisticsTimer: DispatchSourceTimer?

    init(queue: DispatchQueue, lunMap: LUNMap, sessionFactory: @escaping SCSISessionFactory) {
        self.queue = queue
        self.lunMap = lunMap
        self.sessionFactory = sessionFactory
        sessionTable = .allocate(capacity: 1)
        sessionTable.initialize(to: Array(repeating: nil, count: lunMap.nextID))
        sessionRetryAfter = Array(repeating: .now(), count: lunMap.nextID)
        closedSessionCounters = Array(repeating: SCSISessionCounters(), count: lunMap.nextID)
        loginFailures = Array(repeating: 0, count: lunMap.nextID)
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + Self.statisticsInterval, repeating: Self.statisticsInterval,
                       leeway: .milliseconds(100))
        timer.setEventHandler { [weak self] in self?.publishStatistics() }
        timer.activate()
        statisticsTimer = timer
    }

    deinit {
        statisticsTimer?.cancel()
        sessionTable.deinitialize(count: 1)
        sessionTable.deallocate()
    }

    // MARK: - Ring lifecycle (called by the device on `queue`)

    func start(_ vring: Vring) {
        self.vring = vring
        drained = nil
        generation &+= 1
        slots.prepare(count: min(Int(vring.ring.size), Self.maxOutstanding))
        inFlight = 0
        starved = false
        broken = false
        for unit in lunMap.units where sessions[unit.id] == nil {
            _ = session(for: unit)
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
        // Sessions are called with a copy of the array (here and below): an access to the
        // stored array held across a call into a session would keep every access to it
        // checked at run time (see RequestSlotPool).
        let sessions = self.sessions
        for slot in slots.all where slot.backend >= 0 {
            sessions[slot.backend]?.taskManagement(.abortTask(token: slot.token), lun: slot.backendLUN) { _ in }
        }
        for case let session? in sessions { session.flush() }
    }

    /// Logs out of every session (server shutdown).
    func closeSessions() {
        let open = sessions
        for case (let backend, let session?) in open.enumerated() {
            session.close()
            closedSessionCounters[backend] = closedSessionCounters[backend] + session.sessionCounters
        }
        sessionTable.pointee = Array(repeating: nil, count: open.count)
    }

    // MARK: - Requests

    func kick() {
        guard let vring, drained == nil, !broken else { return }
        meters.submissionBatchStarted()
        var pushedNow = false
        defer {
            let sessions = self.sessions
            for case let session? in sessions { session.flush() }
            if pushedNow { vring.publishUsedAndNotify() }
        }
        outer: while true {
            while true {
                guard let token = slots.nextFree else {
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
                slots.takeFree()
                if !begin(slots[token], head: head, vring: vring) {
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
        guard let address = VirtioSCSIAddress(lunField: UnsafeRawBufferPointer(rebasing: slot.header[0..<8])) else {
            respond(slot, vring: vring, response: .badTarget, probingAbsentAddress: true)
            return false
        }
        let found = lunMap.lookup(address)
        if found == .noTarget {
            respond(slot, vring: vring, response: .badTarget, probingAbsentAddress: true)
            return false
        }
        slot.address = address
        let cdb = slot.cdb
        if cdb[0] == SCSIOpcode.reportLUNs {
            respondLocally(slot, vring: vring, data: LocalResponses.reportLUNs(lunMap.luns(of: address.target)))
            return false
        }
        guard case .unit(let unit) = found else {
            respondForUnsupportedLUN(slot, vring: vring)
            return false
        }
        guard dataOutLength == 0 || slot.dataInLength == 0 else {
            // Bidirectional commands need VIRTIO_SCSI_F_INOUT, which is not offered.
            respond(slot, vring: vring, response: .failure)
            return false
        }
        guard let session = session(for: unit) else {
            respond(slot, vring: vring, response: .transportFailure)
            return false
        }
        slot.backend = unit.id
        slot.backendLUN = unit.backendLUN
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
        let command = SCSICommand(lun: unit.backendLUN, cdb: UnsafeRawBufferPointer(rebasing: cdb[0..<cdbLength]),
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
            if slot.token < Int(self.vring?.ring.size ?? 0) { slots.release(slot.token) }
            return
        }
        inFlight -= 1
        let session = sessions[backend]
        let batched = session?.deliversCompletionsInBatches == true
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
                         dataIn: Int = 0, dataOut: Int = 0, probingAbsentAddress: Bool = false) {
        withUnsafeTemporaryAllocation(byteCount: VirtioSCSICommandResponse.byteCount, alignment: 8) { header in
            VirtioSCSICommandResponse.encode(response: response, status: status, residual: residual, sense: sense, into: header)
            slot.chain.writeWritable(at: 0, from: UnsafeRawBufferPointer(header))
        }
        // Response header and data-in were written: log them before the request is used.
        vring.logWrites(to: slot.chain, headerBytes: VirtioSCSICommandResponse.byteCount)
        // A guest's bus scan probes every target and LUN; the "no such address" answers it gets
        // are expected, not errors an operator should be alerted to.
        meters.answered(opcode: slot.cdb[0], responseOK: response == .ok || probingAbsentAddress,
                        status: probingAbsentAddress ? SCSIStatus.good.rawValue : status, bytesRead: dataIn, bytesWritten: dataOut)
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
                        residual: UInt32(slot.dataInLength), sense: sense, probingAbsentAddress: true)
            }
        }
    }

    @inline(__always)
    private func finish(_ slot: RequestSlot, vring: Vring, usedLength: UInt32) {
        // Only a refused request has no response header.
        if usedLength == 0 { meters.refused() }
        vring.push(head: slot.head, length: usedLength)
        slot.backend = -1
        slots.release(slot.token)
    }

    // MARK: - Sessions

    private func session(for unit: LogicalUnit) -> SCSITargetSession? {
        if let session = sessions[unit.id] { return session }
        guard DispatchTime.now() >= sessionRetryAfter[unit.id] else { return nil }
        do {
            let session = try sessionFactory(unit.id, queue, Self.maxOutstanding)
            session.completionSink = self
            sessionTable.pointee[unit.id] = session
            return session
        } catch {
            Log.error("LUN \(unit.address): \(error)")
            loginFailures[unit.id] &+= 1
            sessionRetryAfter[unit.id] = .now() + .seconds(1)
            return nil
        }
    }

    // MARK: - LUN changes (called on `queue` by the device)

    /// Takes a new LUN map. A removed unit's session is closed: its in-flight commands
    /// complete at once as VIRTIO_SCSI_S_ABORTED and later commands to its address are
    /// answered LOGICAL UNIT NOT SUPPORTED. An added unit gets its session now if the ring
    /// runs (as `start` does), so the guest's first command after the rescan event finds it.
    func apply(_ map: LUNMap) {
        guard map.version > lunMap.version else { return }  // an older map that arrived late
        let old = lunMap
        lunMap = map
        if sessions.count < map.nextID {
            sessionTable.pointee += repeatElement(nil, count: map.nextID - sessions.count)
            sessionRetryAfter += repeatElement(.now(), count: map.nextID - sessionRetryAfter.count)
            closedSessionCounters += repeatElement(SCSISessionCounters(), count: map.nextID - closedSessionCounters.count)
            loginFailures += repeatElement(0, count: map.nextID - loginFailures.count)
        }
        for unit in old.units where map.unit(at: unit.address)?.id != unit.id {
            closeSession(of: unit)
        }
        guard vring != nil else { return }
        for unit in map.units where old.unit(at: unit.address)?.id != unit.id {
            _ = session(for: unit)
        }
    }

    private func closeSession(of unit: LogicalUnit) {
        guard let session = sessions[unit.id] else { return }
        let inFlightOnUnit = slots.all.reduce(0) { $0 + ($1.backend == unit.id ? 1 : 0) }
        closedSessionCounters[unit.id] = closedSessionCounters[unit.id] + session.sessionCounters
        session.close()  // completes what is in flight (.aborted) through scsiCommandCompleted
        sessionTable.pointee[unit.id] = nil
        scsiCompletionBatchEnded()
        Log.info("LUN \(unit.address) removed: \(queue.label) closed its session"
                 + (inFlightOnUnit > 0 ? ", \(inFlightOnUnit) command(s) in flight aborted" : ""))
    }

    // MARK: - Statistics

    /// Copies the counters into `statisticsCell`. On `queue`: the timer's, or a reader's
    /// `VirtioSCSIDevice.refreshStatistics`.
    func publishStatistics() {
        let luns = lunMap.units.map { unit in
            let session = sessions[unit.id]
            let counted = (session?.sessionCounters ?? SCSISessionCounters()) + closedSessionCounters[unit.id]
            let link = session?.link
            return LUNStatistics(target: unit.address.target, lun: unit.address.lun, reconnects: counted.reconnects,
                                 connectionLosses: counted.connectionLosses, commandFailures: counted.commandFailures,
                                 loginFailures: loginFailures[unit.id] &+ counted.loginFailures, sessionsUp: link == .up ? 1 : 0,
                                 sessionsReconnecting: link == .reconnecting ? 1 : 0, sessionsFailing: link == .failing ? 1 : 0)
        }
        statisticsCell.publish(QueueStatistics(queue: 0, counters: meters.counters, inFlight: inFlight, luns: luns))
    }

    // MARK: - Task management (called on `queue` by the control queue worker)

    /// Token of the outstanding command with virtio request `id` on `unit`, if any. By unit
    /// id, not address: a command of a removed unit is never taken for one of its successor.
    func outstandingToken(id: UInt64, unit: LogicalUnit) -> Int? {
        guard inFlight > 0 else { return nil }
        for slot in slots.all where slot.backend == unit.id && slot.id == id {
            let session = sessions[slot.backend]
            if session?.isOutstanding(token: slot.token) == true { return slot.token }
        }
        return nil
    }

    func hasOutstanding(on unit: LogicalUnit) -> Bool {
        guard inFlight > 0 else { return false }
        return slots.all.contains { $0.backend == unit.id }
    }

    /// Runs `function` on this queue's session for `unit`; nil reply when there is none.
    func taskManagement(_ function: SCSITaskManagementFunction, unit: LogicalUnit,
                        reply: @escaping (SCSITaskManagementResponse?) -> Void) {
        guard let session = sessions[unit.id] else {
            reply(nil)
            return
        }
        session.taskManagement(function, lun: unit.backendLUN) { response in
            reply(response)
        }
        session.flush()
    }
}
