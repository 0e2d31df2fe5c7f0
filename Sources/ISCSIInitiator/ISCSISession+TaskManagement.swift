internal import CLibISCSI
import SCSICore
import ServerLog

/// One task management function waiting for the target's response. Kept alive by the
/// session's `pendingTaskManagement` until answered; its address is the callback's
/// `private_data`.
final class TaskManagementRequest {
    unowned(unsafe) let session: ISCSISession
    let function: SCSITaskManagementFunction
    let lun: UInt16
    let reply: (SCSITaskManagementResponse) -> Void
    /// For ABORT TASK: the command it aborts, as it was when the function was sent.
    let abortedToken: Int
    let abortedGeneration: UInt32
    var answered = false
    /// When it was sent (monotonic seconds), so an unanswered one cannot hang the guest.
    let sentAt = ISCSISession.monotonicNow()

    init(session: ISCSISession, function: SCSITaskManagementFunction, lun: UInt16,
         reply: @escaping (SCSITaskManagementResponse) -> Void,
         abortedToken: Int = -1, abortedGeneration: UInt32 = 0) {
        self.session = session
        self.function = function
        self.lun = lun
        self.reply = reply
        self.abortedToken = abortedToken
        self.abortedGeneration = abortedGeneration
    }
}

/// libiscsi calls this when the target answered (status GOOD, `commandData` points to the
/// response code as a uint32_t, lib/task_mgmt.c) or when the function failed or was cancelled.
private let taskManagementCallback: iscsi_command_cb = { _, status, commandData, privateData in
    guard let privateData else { return }
    // SAFETY: privateData is an unretained TaskManagementRequest, kept alive by the session's
    // pendingTaskManagement until the context is destroyed (after which no callback runs).
    let request = Unmanaged<TaskManagementRequest>.fromOpaque(privateData).takeUnretainedValue()
    var response: UInt32?
    if status == LibISCSIStatus.good, let commandData {
        // SAFETY: for a task management response libiscsi passes a pointer to a uint32_t.
        response = commandData.load(as: UInt32.self)
    }
    request.session.taskManagementFinished(request, status: status, response: response)
}

extension ISCSISession {
    /// iSCSI task management response codes (RFC 7143 §11.6.1).
    enum TMFResponse {
        static let functionComplete: UInt32 = 0
        static let taskDoesNotExist: UInt32 = 1
        static let lunDoesNotExist: UInt32 = 2
        static let notSupported: UInt32 = 5
        static let rejected: UInt32 = 255
    }

    /// Carries out `function` on `lun`. `reply` runs on the session's queue, never inside this
    /// call. Commands the function ends are completed first: `.aborted` for ABORT TASK, ABORT
    /// TASK SET and CLEAR TASK SET; `.reset` for LOGICAL UNIT RESET, the ABORT TASK SET that
    /// follows one on another nexus, and TARGET WARM RESET (all LUNs). They are cancelled locally only after the target confirmed the function, so a
    /// command the target already answered completes normally.
    ///
    /// QUERY TASK and QUERY TASK SET are answered locally: `.functionSucceeded` when the
    /// command (any command on `lun`) is outstanding, else `.functionComplete`.
    ///
    /// During an outage nothing waits for the target: see `taskManagementDuringOutage`.
    public func taskManagement(_ function: SCSITaskManagementFunction, lun: UInt16,
                               reply: @escaping (SCSITaskManagementResponse) -> Void) {
        guard !closed else {
            replyLater(reply, .failed)
            return
        }
        switch function {
        case .queryTask(let token):
            let outstanding = isOutstanding(token: token) && slots[token].lun == lun
            replyLater(reply, outstanding ? .functionSucceeded : .functionComplete)
            return
        case .queryTaskSet:
            let any = outstandingCount > 0
                && (0..<maxOutstanding).contains { slots[$0].state != .idle && slots[$0].lun == lun }
            replyLater(reply, any ? .functionSucceeded : .functionComplete)
            return
        default:
            break
        }
        guard linkUp, let ctx = context else {
            taskManagementDuringOutage(function, lun: lun, reply: reply)
            return
        }
        let code: iscsi_task_mgmt_funcs
        switch function {
        case .queryTask, .queryTaskSet:
            return
        case .abortTask(let token):
            abortTask(token: token, lun: lun, ctx: ctx, reply: reply)
            return
        case .abortTaskSet, .abortTaskSetAfterLogicalUnitReset: code = ISCSI_TM_ABORT_TASK_SET
        case .clearTaskSet: code = ISCSI_TM_CLEAR_TASK_SET
        case .clearACA: code = ISCSI_TM_CLEAR_ACA
        case .logicalUnitReset: code = ISCSI_TM_LUN_RESET
        case .targetWarmReset: code = ISCSI_TM_TARGET_WARM_RESET
        }
        let request = TaskManagementRequest(session: self, function: function, lun: lun, reply: reply)
        let targetLUN = function == .targetWarmReset ? 0 : Int32(lun)
        // The generic call: libiscsi's per-function helpers cancel every task of every LUN
        // locally before the target has even answered.
        send(request) { ctx, requestPointer in
            iscsi_task_mgmt_async(ctx, targetLUN, code, 0xFFFF_FFFF, 0, taskManagementCallback, requestPointer)
        }
    }

    /// The connection is down, so every command outstanding here is held by the session and
    /// none is at the target (it ended the old connection's tasks). Aborts are carried out
    /// locally and answered FUNCTION COMPLETE: the held commands they name complete
    /// `.aborted` and are never sent. Resets cannot be delivered and are answered FAILED at
    /// once, so a guest's error handling moves on instead of waiting for the target.
    private func taskManagementDuringOutage(_ function: SCSITaskManagementFunction, lun: UInt16,
                                            reply: @escaping (SCSITaskManagementResponse) -> Void) {
        switch function {
        case .abortTask(let token):
            if isOutstanding(token: token), slots[token].lun == lun {
                cancelOutstanding(outcome: .aborted) { $0.token == token }
            }
            replyLater(reply, .functionComplete)
        case .abortTaskSet, .clearTaskSet:
            cancelOutstanding(outcome: .aborted) { $0.lun == lun }
            replyLater(reply, .functionComplete)
        case .abortTaskSetAfterLogicalUnitReset:
            cancelOutstanding(outcome: .reset) { $0.lun == lun }
            replyLater(reply, .functionComplete)
        case .clearACA, .logicalUnitReset, .targetWarmReset:
            Log.warning("iscsi: \(function) for LUN \(lun) answered FAILED: \(url) is unreachable")
            replyLater(reply, .failed)
        case .queryTask, .queryTaskSet:
            replyLater(reply, .failed)
        }
    }

    private func abortTask(token: Int, lun: UInt16, ctx: OpaquePointer,
                           reply: @escaping (SCSITaskManagementResponse) -> Void) {
        guard token >= 0, token < maxOutstanding, slots[token].state != .idle, slots[token].lun == lun else {
            // No such task: nothing to abort (SAM-5 §7.2).
            replyLater(reply, .functionComplete)
            return
        }
        guard slots[token].state == .inFlight, let task = slots[token].task else {
            // It completes on this turn of the queue anyway, before the reply below.
            replyLater(reply, .functionComplete)
            return
        }
        let request = TaskManagementRequest(session: self, function: .abortTask(token: token), lun: lun,
                                            reply: reply, abortedToken: token,
                                            abortedGeneration: slots[token].generation)
        send(request) { ctx, requestPointer in
            iscsi_task_mgmt_abort_task_async(ctx, task, taskManagementCallback, requestPointer)
        }
    }

    private func send(_ request: TaskManagementRequest,
                      _ call: (OpaquePointer, UnsafeMutableRawPointer) -> Int32) {
        guard let ctx = context else {
            replyLater(request.reply, .failed)
            return
        }
        pendingTaskManagement.append(request)
        let pointer = Unmanaged.passUnretained(request).toOpaque()
        let rc = withLibiscsi { call(ctx, pointer) }
        if rc != 0 {
            Log.warning("iscsi: cannot send \(request.function) to \(url): \(context.map(lastError) ?? "session closed")")
            forget(request)
            if !request.answered {
                request.answered = true
                replyLater(request.reply, .failed)
            }
            return
        }
        Log.info("iscsi: sent \(request.function) for LUN \(request.lun) to \(url)")
        scheduleFlush()
    }

    func taskManagementFinished(_ request: TaskManagementRequest, status: Int32, response: UInt32?) {
        guard !request.answered else { return }
        request.answered = true
        forget(request)
        guard let response else {
            Log.warning("iscsi: \(request.function) on \(url) failed: libiscsi status \(status)")
            request.reply(.failed)
            return
        }
        let result = Self.map(response, for: request.function)
        Log.info("iscsi: \(request.function) for LUN \(request.lun) on \(url): response \(response) -> \(result)")
        if result == .functionComplete {
            let lun = request.lun
            let ended: Int
            switch request.function {
            case .abortTask:
                let token = request.abortedToken
                ended = cancelOutstanding(outcome: .aborted) { slot in
                    slot.token == token && slot.generation == request.abortedGeneration
                }
            case .abortTaskSet, .clearTaskSet:
                ended = cancelOutstanding(outcome: .aborted) { $0.lun == lun }
            case .logicalUnitReset, .abortTaskSetAfterLogicalUnitReset:
                ended = cancelOutstanding(outcome: .reset) { $0.lun == lun }
            case .targetWarmReset:
                ended = cancelOutstanding(outcome: .reset) { _ in true }
            case .clearACA, .queryTask, .queryTaskSet:
                ended = 0
            }
            if ended > 0 {
                Log.info("iscsi: \(request.function) on \(url) ended \(ended) command(s) the target did not answer")
            }
        }
        request.reply(result)
    }

    /// SAM service response for an iSCSI task management response code.
    static func map(_ response: UInt32, for function: SCSITaskManagementFunction) -> SCSITaskManagementResponse {
        switch response {
        case TMFResponse.functionComplete:
            return .functionComplete
        case TMFResponse.taskDoesNotExist:
            // The task already ended: the abort has nothing left to do.
            if case .abortTask = function { return .functionComplete }
            return .failed
        case TMFResponse.lunDoesNotExist:
            return .incorrectLUN
        case TMFResponse.notSupported, TMFResponse.rejected:
            return .functionRejected
        default:
            return .failed
        }
    }

    private func forget(_ request: TaskManagementRequest) {
        pendingTaskManagement.removeAll { $0 === request }
    }

    /// Answers on a later turn of the queue, never inside the caller's call.
    func replyLater(_ reply: @escaping (SCSITaskManagementResponse) -> Void,
                    _ response: SCSITaskManagementResponse) {
        let confined = QueueConfined(value: reply)
        queue.async { @Sendable in confined.value(response) }
    }
}
