import Glibc

/// Direction of a command's data phase, as seen from the initiator (the guest).
public enum SCSIDataDirection: Sendable, Equatable {
    case none
    /// Data-out: the initiator sends data (WRITE).
    case toDevice
    /// Data-in: the device returns data (READ, INQUIRY).
    case fromDevice
}

/// SAM task attribute (SAM-5 §8.9; virtio-scsi task_attr uses the same codes).
public enum SCSITaskAttribute: UInt8, Sendable {
    case simple = 0, ordered = 1, headOfQueue = 2, aca = 3
}

/// One SCSI command handed to a target session.
///
/// The buffers are borrowed: `cdb` only for the duration of `submit`, `buffers` (an iovec array
/// pointing into guest memory) until the command completes. A session may rewrite the iovec
/// entries while it transfers (libiscsi does), so each in-flight command needs its own array.
public struct SCSICommand {
    /// Target-local logical unit number (SAM flat addressing, 0...16383).
    public var lun: UInt16
    public var cdb: UnsafeRawBufferPointer
    public var direction: SCSIDataDirection
    public var buffers: UnsafeMutableBufferPointer<iovec>
    /// Total length of `buffers` in bytes: the expected data transfer length.
    public var transferLength: Int
    public var taskAttribute: SCSITaskAttribute

    public init(lun: UInt16, cdb: UnsafeRawBufferPointer, direction: SCSIDataDirection,
                buffers: UnsafeMutableBufferPointer<iovec>, transferLength: Int,
                taskAttribute: SCSITaskAttribute = .simple) {
        self.lun = lun
        self.cdb = cdb
        self.direction = direction
        self.buffers = buffers
        self.transferLength = transferLength
        self.taskAttribute = taskAttribute
    }
}

/// How a command ended at the transport level. SCSI errors (CHECK CONDITION, BUSY...) are not
/// transport errors: they arrive as `.completed` with the status and sense the target gave.
public enum SCSITransportOutcome: Sendable, Equatable {
    /// The target returned a SCSI status (good or not).
    case completed
    /// The command was aborted by a task management function or cancelled locally.
    case aborted
    /// The command could not be delivered or its outcome is unknown (connection lost, timeout).
    case transportFailure
    /// The logical unit or target was reset while the command was outstanding.
    case reset
}

/// The outcome of one command. `sense` is borrowed: valid only inside the completion call.
public struct SCSICompletion {
    public var outcome: SCSITransportOutcome
    public var status: SCSIStatus
    public var sense: UnsafeRawBufferPointer
    /// Data-in/data-out residual (underflow) in bytes, as the target reported it.
    public var residual: Int

    public init(outcome: SCSITransportOutcome, status: SCSIStatus = .good,
                sense: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                residual: Int = 0) {
        self.outcome = outcome
        self.status = status
        self.sense = sense
        self.residual = residual
    }
}

/// Receives completions from a `SCSITargetSession`, on the session's queue.
public protocol SCSICompletionSink: AnyObject {
    /// `token` is the value passed to `submit`.
    func scsiCommandCompleted(token: Int, _ completion: SCSICompletion)

    /// A session whose `deliversCompletionsInBatches` is true calls this after each batch of
    /// completions (everything one read of its connection produced), so the sink can do its
    /// per-batch work (interrupting the guest) once instead of per command.
    func scsiCompletionBatchEnded()
}

extension SCSICompletionSink {
    public func scsiCompletionBatchEnded() {}
}

/// Task management functions (SAM-5 §7), as carried by virtio-scsi's control queue.
public enum SCSITaskManagementFunction: Sendable, Equatable {
    case abortTask(token: Int)
    case abortTaskSet
    case clearTaskSet
    case clearACA
    case logicalUnitReset
    /// ABORT TASK SET on an I_T nexus other than the one that carried a LOGICAL UNIT RESET.
    /// The reset already ended this nexus's tasks at the target, which need not report them
    /// (SAM-5 §6.3.2, TAS=0); this collects them, and they complete `.reset`, not `.aborted`,
    /// so an initiator retries them as it does the reset nexus's own (virtio 1.2 §5.6.6.1:
    /// VIRTIO_SCSI_S_RESET).
    case abortTaskSetAfterLogicalUnitReset
    /// Also used for I_T nexus reset, which iSCSI has no separate function for.
    case targetWarmReset
    case queryTask(token: Int)
    case queryTaskSet
}

/// SAM-5 §7.12 service responses of a task management function.
public enum SCSITaskManagementResponse: Sendable, Equatable {
    case functionComplete
    case functionSucceeded
    case functionRejected
    case incorrectLUN
    case failed
}

/// One connection to a SCSI target (an I_T nexus), confined to a single serial queue: every
/// method is called on that queue and every completion is delivered on it.
public protocol SCSITargetSession: AnyObject {
    var completionSink: SCSICompletionSink? { get set }

    /// Queues `command`. Returns false when it could not be queued (the session is gone);
    /// the sink is then not called for `token`. Otherwise the sink is called exactly once.
    func submit(_ command: SCSICommand, token: Int) -> Bool

    /// Sends what `submit` and `taskManagement` queued. Callers submit a batch, then flush once.
    func flush()

    /// Carries out a task management function on `lun`. For `.abortTask`, `token` names a
    /// command submitted on this session. Commands that the function ends are completed before
    /// `reply` runs: outcome `.reset` for the resets and `.abortTaskSetAfterLogicalUnitReset`,
    /// `.aborted` for the aborts.
    func taskManagement(_ function: SCSITaskManagementFunction, lun: UInt16,
                        reply: @escaping (SCSITaskManagementResponse) -> Void)

    /// True when the session calls `scsiCompletionBatchEnded()` after every batch of
    /// completions; false (the default) when each completion stands alone.
    var deliversCompletionsInBatches: Bool { get }

    /// Whether a command with `token` is outstanding on this session.
    func isOutstanding(token: Int) -> Bool

    /// Cancels every outstanding command (each completes with `.aborted`) and logs out.
    func close()

    /// What the session has counted since it was made (read on the session's queue, for
    /// metrics); zeros by default.
    var sessionCounters: SCSISessionCounters { get }

    /// Whether the session can reach its target now (read on the session's queue, for the
    /// LUN state in `list` and the metrics); `.up` by default.
    var link: SCSISessionLink { get }
}

/// A session's connection to its target, as an operator wants to see it.
public enum SCSISessionLink: Sendable, Equatable {
    /// Logged in.
    case up
    /// The connection was lost and the session is logging in again, or it has not logged in
    /// yet; commands wait.
    case reconnecting
    /// Lost for longer than the outage timeout: commands fail until the target is back.
    case failing
}

extension SCSITargetSession {
    public var deliversCompletionsInBatches: Bool { false }
    public var sessionCounters: SCSISessionCounters { SCSISessionCounters() }
    public var link: SCSISessionLink { .up }
}

/// Transport events a session counts, for metrics (Docs/OBSERVABILITY.md).
public struct SCSISessionCounters: Sendable, Equatable {
    /// Logins again after the connection was lost.
    public var reconnects: UInt64
    /// Connections lost (or the target declared dead).
    public var connectionLosses: UInt64
    /// Commands completed with `.transportFailure`.
    public var commandFailures: UInt64
    /// Failed attempts of a first login made in the background (a session that returned
    /// before it logged in).
    public var loginFailures: UInt64

    public init(reconnects: UInt64 = 0, connectionLosses: UInt64 = 0, commandFailures: UInt64 = 0,
                loginFailures: UInt64 = 0) {
        self.reconnects = reconnects
        self.connectionLosses = connectionLosses
        self.commandFailures = commandFailures
        self.loginFailures = loginFailures
    }

    public static func + (a: SCSISessionCounters, b: SCSISessionCounters) -> SCSISessionCounters {
        SCSISessionCounters(reconnects: a.reconnects &+ b.reconnects,
                            connectionLosses: a.connectionLosses &+ b.connectionLosses,
                            commandFailures: a.commandFailures &+ b.commandFailures,
                            loginFailures: a.loginFailures &+ b.loginFailures)
    }
}
