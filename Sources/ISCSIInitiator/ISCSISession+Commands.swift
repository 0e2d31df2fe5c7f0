import Glibc
internal import CLibISCSI
import SCSICore
import ServerLog

/// libiscsi's callback statuses that are not SCSI status bytes (iscsi.h `enum scsi_status`).
enum LibISCSIStatus {
    static let cancelled = Int32(bitPattern: SCSI_STATUS_CANCELLED.rawValue)
    static let error = Int32(bitPattern: SCSI_STATUS_ERROR.rawValue)
    static let timeout = Int32(bitPattern: SCSI_STATUS_TIMEOUT.rawValue)
    static let good = Int32(bitPattern: SCSI_STATUS_GOOD.rawValue)
}

/// The completion callback of every command: `privateData` is the command's `CommandSlot`.
/// `commandData` is the task, or NULL in some cancel paths: the slot's task is what counts.
let commandCompletionCallback: iscsi_command_cb = { _, status, commandData, privateData in
    guard let privateData else { return }
    // SAFETY: privateData is the address of a slot of a live session (set by `submit`; the
    // session destroys its context, ending all callbacks, before it frees its slots).
    let slot = privateData.assumingMemoryBound(to: CommandSlot.self)
    slot.pointee.owner.takeUnretainedValue().commandCallback(slot, status: status, commandData: commandData)
}

/// Sense data for commands the session fails itself, made once.
private let invalidOperationCodeSense = FixedSenseData.invalidCommandOperationCode.bytes
private let invalidFieldInCDBSense = FixedSenseData.invalidFieldInCDB.bytes

extension ISCSISession {
    /// libiscsi's limit (`SCSI_CDB_MAX_SIZE`); iSCSI carries longer CDBs in an AHS, which
    /// libiscsi does not build.
    static let maximumCDBLength = 16

    /// Queues `command` under `token` (`0..<maxOutstanding`, not outstanding). The buffers are
    /// handed to libiscsi as they are (zero copy) and must stay valid, with their iovec array,
    /// until the completion. Returns false only when the session is closed or libiscsi refused
    /// the command (out of memory); the sink is then not called.
    ///
    /// During an outage (`ISCSIRecoveryPolicy`) the command is held and sent after the next
    /// login; past the outage timeout it completes with `.transportFailure` on a later turn.
    ///
    /// A CDB longer than 16 bytes completes (on a later turn of the queue) with CHECK CONDITION,
    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE, as a target without that command would.
    /// libiscsi sends every command with the SIMPLE task attribute.
    public func submit(_ command: SCSICommand, token: Int) -> Bool {
        precondition(token >= 0 && token < maxOutstanding, "token \(token) out of 0..<\(maxOutstanding)")
        let slot = slots + token
        precondition(slot.pointee.state == .idle, "token \(token) is already outstanding")
        guard !closed else { return false }
        slot.pointee.generation &+= 1
        slot.pointee.lun = command.lun
        slot.pointee.cancelOutcome = nil
        submitSequence &+= 1
        slot.pointee.sequence = submitSequence
        if failingCommands {
            completeLater(slot, .transportFailure)
            return true
        }

        let cdbLength = command.cdb.count
        guard let cdb = command.cdb.baseAddress, cdbLength > 0, cdbLength <= Self.maximumCDBLength else {
            completeLater(slot, .invalidOperationCode)
            return true
        }
        guard command.transferLength >= 0, command.transferLength <= Int(Int32.max) else {
            completeLater(slot, .invalidFieldInCDB)
            return true
        }
        let direction = command.transferLength == 0 ? SCSIDataDirection.none : command.direction
        let xfer: scsi_xfer_dir
        switch direction {
        case .none: xfer = SCSI_XFER_NONE
        case .fromDevice: xfer = SCSI_XFER_READ
        case .toDevice: xfer = SCSI_XFER_WRITE
        }
        let expected = direction == .none ? 0 : Int32(command.transferLength)

        // SAFETY: scsi_create_task copies the CDB (valid for the duration of submit) into the
        // task; libiscsi never writes through the pointer.
        guard let task = scsi_create_task(Int32(cdbLength),
                                          UnsafeMutablePointer(mutating: cdb.assumingMemoryBound(to: UInt8.self)),
                                          Int32(xfer.rawValue), expected)
        else {
            Log.error("iscsi: out of memory creating a task for \(url)")
            return false
        }
        if direction != .none, let iov = command.buffers.baseAddress {
            // SAFETY: `struct scsi_iovec` is declared to follow POSIX `struct iovec` (checked by
            // `iovecLayoutMatches`); the caller keeps the array and the memory it points to
            // alive and otherwise untouched until the completion.
            let scsiIOV = UnsafeMutablePointer<scsi_iovec>(OpaquePointer(iov))
            let count = Int32(clamping: command.buffers.count)
            if direction == .fromDevice {
                scsi_task_set_iov_in(task, scsiIOV, count)
            } else {
                scsi_task_set_iov_out(task, scsiIOV, count)
            }
        }

        slot.pointee.task = task
        outstandingCount += 1
        guard linkUp, let ctx = context else {
            // Reconnecting: sent after the login (`attemptSucceeded`).
            slot.pointee.state = .held
            return true
        }
        slot.pointee.state = .submitting
        slot.pointee.sentAt = Self.monotonicNow()
        let rc = withLibiscsi {
            iscsi_scsi_command_async(ctx, Int32(command.lun), task, commandCompletionCallback, nil,
                                     UnsafeMutableRawPointer(slot))
        }
        if rc != 0 {
            // Not queued. libiscsi may have called back already; that call only marked the slot.
            Log.debug("iscsi: \(url) refused a command: \(context.map(lastError) ?? "session closed")")
            slot.pointee.task = nil
            slot.pointee.state = .idle
            outstandingCount -= 1
            scsi_free_scsi_task(task)
            return false
        }
        if slot.pointee.state == .localCompletion {
            // Queued, then failed inside the same call (libiscsi ignores some errors of its own
            // data-out path). Complete once, later, as a transport failure.
            completeLater(slot, .transportFailure)
            return true
        }
        slot.pointee.state = .inFlight
        scheduleFlush()
        return true
    }

    /// Called by libiscsi, on the session's queue, when the command in `slot` ends.
    func commandCallback(_ slot: UnsafeMutablePointer<CommandSlot>, status: Int32,
                         commandData: UnsafeMutableRawPointer?) {
        if !orphanedTasks.isEmpty, let commandData, forgetOrphan(commandData) { return }
        switch slot.pointee.state {
        case .inFlight:
            break
        case .submitting:
            // Failed inside `iscsi_scsi_command_async`; `submit` decides what happens.
            slot.pointee.state = .localCompletion
            return
        case .idle, .localCompletion, .held:
            // Already completed (completion is one-shot), or held for a reconnect.
            return
        }
        guard let task = slot.pointee.task,
              commandData == nil || commandData == UnsafeMutableRawPointer(task)
        else { return }
        if status == LibISCSIStatus.cancelled, slot.pointee.cancelOutcome == nil, !closed, !tearingDown {
            // Not a cancel of ours: libiscsi gave the command back because the connection
            // failed (or the session is dropping it). Hold it for the reconnect.
            slot.pointee.state = .held
            connectionLost("the connection failed")
            return
        }
        let token = slot.pointee.token
        let cancelOutcome = slot.pointee.cancelOutcome
        release(slot)

        var completion = SCSICompletion(outcome: .transportFailure)
        switch status {
        case LibISCSIStatus.cancelled:
            completion.outcome = cancelOutcome ?? .transportFailure
        case LibISCSIStatus.error, LibISCSIStatus.timeout:
            Log.debug("iscsi: command failed on \(url): \(context.map(lastError) ?? "session closed")")
        case 0...0xFF:
            completion.outcome = .completed
            completion.status = SCSIStatus(rawValue: UInt8(status))
            completion.residual = residual(of: task)
            if completion.status == .checkCondition {
                completion.sense = senseBytes(of: task)
            }
        default:
            Log.debug("iscsi: command on \(url) ended with libiscsi status \(status)")
        }
        deliver(token: token, completion)
        // A cancel the session started frees the task itself, after purging every PDU of it.
        if cancelOutcome == nil { scsi_free_scsi_task(task) }
    }

    /// Frees `data` if it is an orphaned task that libiscsi has now finished with.
    func forgetOrphan(_ data: UnsafeMutableRawPointer) -> Bool {
        guard let index = orphanedTasks.firstIndex(where: { UnsafeMutableRawPointer($0) == data }) else {
            return false
        }
        scsi_free_scsi_task(orphanedTasks.remove(at: index))
        return true
    }

    /// Removes every PDU of `task` from libiscsi's queues (the command and any data-out PDUs
    /// with its ITT), calling back the command once. Returns whether any was found.
    @discardableResult
    func purge(_ task: UnsafeMutablePointer<scsi_task>) -> Bool {
        var found = false
        while let ctx = context, !tearingDown,
              withLibiscsi({ iscsi_scsi_cancel_task(ctx, task) }) == 0 {
            found = true
        }
        return found
    }

    /// Returns `slot` to idle; the caller owns its task now.
    @inline(__always)
    func release(_ slot: UnsafeMutablePointer<CommandSlot>) {
        slot.pointee.task = nil
        slot.pointee.state = .idle
        slot.pointee.cancelOutcome = nil
        outstandingCount -= 1
    }

    @inline(__always)
    func deliver(token: Int, _ completion: SCSICompletion) {
        if completion.outcome == .transportFailure { commandFailures &+= 1 }
        if let sink = completionSink {
            sink.scsiCommandCompleted(token: token, completion)
            // Inside `service` the batch ends when libiscsi returns; elsewhere it is this one.
            if servicing { completedInBatch = true } else { sink.scsiCompletionBatchEnded() }
        } else {
            Log.warning("iscsi: no completion sink for token \(token) on \(url)")
        }
    }

    /// The raw sense data of a CHECK CONDITION. libiscsi keeps the response's data segment in
    /// `datain`: a 2-byte big-endian SenseLength, then the sense bytes (RFC 7143 §11.4.7.2).
    func senseBytes(of task: UnsafeMutablePointer<scsi_task>) -> UnsafeRawBufferPointer {
        let datain = task.pointee.datain
        guard let data = datain.data, datain.size >= 2 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        let declared = Int(data[0]) << 8 | Int(data[1])
        // SAFETY: `data` holds `size` bytes owned by the task, alive until scsi_free_scsi_task,
        // which runs after the sink returns.
        return UnsafeRawBufferPointer(start: data + 2, count: min(declared, Int(datain.size) - 2))
    }

    /// Underflow residual as the target reported it; overflow is reported as 0 (the buffers
    /// were filled) and logged.
    func residual(of task: UnsafeMutablePointer<scsi_task>) -> Int {
        switch task.pointee.residual_status {
        case SCSI_RESIDUAL_UNDERFLOW:
            return Int(task.pointee.residual)
        case SCSI_RESIDUAL_OVERFLOW:
            Log.debug("iscsi: residual overflow of \(task.pointee.residual) bytes on \(url)")
            return 0
        default:
            return 0
        }
    }

    /// Marks `slot` to complete with `result` on a later turn of the queue, never inside the
    /// caller's `submit`.
    func completeLater(_ slot: UnsafeMutablePointer<CommandSlot>, _ result: CommandSlot.LocalResult) {
        if slot.pointee.state == .idle { outstandingCount += 1 }
        slot.pointee.state = .localCompletion
        slot.pointee.localResult = result
        let token = slot.pointee.token
        let generation = slot.pointee.generation
        queue.async { @Sendable [weak self] in
            self?.runLocalCompletion(token: token, generation: generation)
        }
    }

    func runLocalCompletion(token: Int, generation: UInt32) {
        let slot = slots + token
        guard slot.pointee.state == .localCompletion, slot.pointee.generation == generation else { return }
        let task = slot.pointee.task
        let result = slot.pointee.localResult
        release(slot)
        switch result {
        case .transportFailure:
            deliver(token: token, SCSICompletion(outcome: .transportFailure))
        case .invalidOperationCode:
            deliverCheckCondition(token: token, sense: invalidOperationCodeSense)
        case .invalidFieldInCDB:
            deliverCheckCondition(token: token, sense: invalidFieldInCDBSense)
        }
        if let task {
            // Data-out PDUs queued before the failure may still name the task.
            purge(task)
            scsi_free_scsi_task(task)
        }
    }

    func deliverCheckCondition(token: Int, sense: [UInt8]) {
        sense.withUnsafeBytes { bytes in
            deliver(token: token, SCSICompletion(outcome: .completed, status: .checkCondition, sense: bytes))
        }
    }

    /// Completes every outstanding command that `matches` with `outcome`, each exactly once,
    /// before returning. In-flight commands are cancelled in libiscsi (their callback reports
    /// the outcome); commands libiscsi no longer holds are completed directly.
    /// Returns how many commands it ended.
    @discardableResult
    func cancelOutstanding(outcome: SCSITransportOutcome, _ matches: (CommandSlot) -> Bool) -> Int {
        guard outstandingCount > 0 else { return 0 }
        // Snapshot first: a sink may resubmit a token while we cancel, and a new command must
        // not be cancelled by an older function.
        var victims: [(token: Int, generation: UInt32)] = []
        for token in 0..<maxOutstanding where slots[token].state != .idle && matches(slots[token]) {
            victims.append((token, slots[token].generation))
        }
        for victim in victims {
            let slot = slots + victim.token
            guard slot.pointee.state != .idle, slot.pointee.generation == victim.generation else { continue }
            let task = slot.pointee.task
            if slot.pointee.state == .inFlight, let task {
                slot.pointee.cancelOutcome = outcome
                purge(task)
                if slot.pointee.task == task {
                    // libiscsi did not call it back: it is not in its queues now (reconnecting,
                    // or the context is gone). Complete it; keep the task until libiscsi is done.
                    release(slot)
                    deliver(token: victim.token, SCSICompletion(outcome: outcome))
                    if context != nil { orphanedTasks.append(task) } else { scsi_free_scsi_task(task) }
                } else {
                    scsi_free_scsi_task(task)
                }
            } else {
                // A local completion not yet run, or a command held for a reconnect: it ends
                // now, with `outcome`. A held task is in no libiscsi queue; it must not be
                // purged, since libiscsi cancels by ITT and the ITT is the old connection's.
                let held = slot.pointee.state == .held
                release(slot)
                deliver(token: victim.token, SCSICompletion(outcome: outcome))
                if let task {
                    if !held { purge(task) }
                    scsi_free_scsi_task(task)
                }
            }
        }
        return victims.count
    }

    /// Sends a held command again on the new connection, as a new task with the old one's CDB,
    /// direction, length and buffers (the old task carries the old connection's ITT and
    /// transfer offsets).
    func resend(_ slot: UnsafeMutablePointer<CommandSlot>, ctx: OpaquePointer, now: Double) {
        guard slot.pointee.state == .held, let old = slot.pointee.task else { return }
        var cdb = old.pointee.cdb
        let task = withUnsafeMutableBytes(of: &cdb) { bytes in
            scsi_create_task(old.pointee.cdb_size, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self),
                             old.pointee.xfer_dir, old.pointee.expxferlen)
        }
        guard let task else {
            Log.error("iscsi: out of memory re-creating a task for \(url)")
            scsi_free_scsi_task(old)
            slot.pointee.task = nil
            completeLater(slot, .transportFailure)
            return
        }
        if let iov = old.pointee.iovector_in.iov {
            scsi_task_set_iov_in(task, iov, old.pointee.iovector_in.niov)
        }
        if let iov = old.pointee.iovector_out.iov {
            scsi_task_set_iov_out(task, iov, old.pointee.iovector_out.niov)
        }
        scsi_free_scsi_task(old)
        slot.pointee.task = task
        slot.pointee.state = .submitting
        slot.pointee.sentAt = now
        let rc = withLibiscsi {
            iscsi_scsi_command_async(ctx, Int32(slot.pointee.lun), task, commandCompletionCallback, nil,
                                     UnsafeMutableRawPointer(slot))
        }
        if rc != 0 {
            Log.warning("iscsi: \(url) refused a re-sent command: \(context.map(lastError) ?? "session closed")")
            slot.pointee.task = nil
            scsi_free_scsi_task(task)
            completeLater(slot, .transportFailure)
        } else if slot.pointee.state == .localCompletion {
            completeLater(slot, .transportFailure)
        } else if slot.pointee.state == .submitting {
            slot.pointee.state = .inFlight
        }
    }

    /// `struct scsi_iovec` and Glibc's `iovec` must agree for the zero-copy cast in `submit`.
    static let iovecLayoutMatches: Bool = {
        MemoryLayout<iovec>.size == MemoryLayout<scsi_iovec>.size
            && MemoryLayout<iovec>.stride == MemoryLayout<scsi_iovec>.stride
            && MemoryLayout<iovec>.offset(of: \iovec.iov_base) == MemoryLayout<scsi_iovec>.offset(of: \scsi_iovec.iov_base)
            && MemoryLayout<iovec>.offset(of: \iovec.iov_len) == MemoryLayout<scsi_iovec>.offset(of: \scsi_iovec.iov_len)
    }()
}
