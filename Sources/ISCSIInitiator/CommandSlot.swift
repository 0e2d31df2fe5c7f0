internal import CLibISCSI
import SCSICore

/// Per-token state of one command, preallocated for every token when the session is made.
///
/// A slot's address is the `private_data` libiscsi hands back to the completion callback, so
/// the hot path neither allocates nor retains: the callback finds its session through the
/// unretained `owner` and the command through `task`.
struct CommandSlot {
    enum State: UInt8 {
        /// Free for `submit`.
        case idle
        /// Inside `iscsi_scsi_command_async`: a callback now only records a failure.
        case submitting
        /// Queued in libiscsi; the libiscsi callback will complete it.
        case inFlight
        /// Completed by the session itself on a later turn of the queue (see `LocalResult`).
        case localCompletion
        /// Waiting for a reconnect: the task is in no libiscsi queue; it is sent again after
        /// the next login, or failed when the outage lasts too long.
        case held
    }

    /// What a `.localCompletion` slot completes with.
    enum LocalResult: UInt8 {
        /// libiscsi failed the command while it was being queued.
        case transportFailure
        /// The CDB cannot be carried (longer than libiscsi's 16 bytes).
        case invalidOperationCode
        /// The transfer length does not fit an iSCSI expected data transfer length.
        case invalidFieldInCDB
    }

    /// The session, not retained: it outlives every callback (it destroys its libiscsi context
    /// before it goes away).
    let owner: Unmanaged<ISCSISession>
    let token: Int
    var state: State = .idle
    /// Bumped by every `submit`, so delayed work can tell a reused token from its old command.
    var generation: UInt32 = 0
    var lun: UInt16 = 0
    var task: UnsafeMutablePointer<scsi_task>?
    var localResult: LocalResult = .transportFailure
    /// Set just before the session cancels the task itself: the outcome its
    /// `SCSI_STATUS_CANCELLED` callback reports. A cancel libiscsi makes on its own (it gave up
    /// reconnecting) leaves it nil and reports `.transportFailure`.
    var cancelOutcome: SCSITransportOutcome?
    /// Submission order, so held commands are sent again in the order they came.
    var sequence: UInt64 = 0
    /// When the command was (last) sent, in the session's coarse clock (seconds).
    var sentAt: Double = 0

    init(owner: Unmanaged<ISCSISession>, token: Int) {
        self.owner = owner
        self.token = token
    }
}
