import Dispatch
import Glibc
internal import CLibISCSI
import ServerLog

/// Logs a closed session's context out of its target away from the session's queue, then
/// destroys the context, so that `ISCSISession.close()` never waits for the target.
///
/// The session hands the context over only once nothing in it can call back into the session:
/// it cancels every PDU first (`iscsi_scsi_cancel_all_tasks` calls each callback, CANCELLED,
/// while the session is alive), and from then on the context is this object's alone. The only
/// callback left is the logout's, whose `private_data` is this object, kept alive until the
/// context is destroyed.
///
/// A target that answers gets its clean logout (RFC 7143 §11.14); a silent one is given
/// `timeout` seconds, then the connection is dropped. Like every libiscsi write (writev), the
/// logout can raise SIGPIPE when the peer is gone: the process must ignore SIGPIPE, as the
/// server does.
final class BackgroundLogout: @unchecked Sendable {
    /// Every logout still running in the process, for `ISCSISession.waitForBackgroundLogouts`.
    static let running = DispatchGroup()

    private let context: OpaquePointer
    private let what: String
    /// Set by the logout callback (on the thread that runs `iscsi_service`, i.e. `run`).
    private var finished = false
    private var failure: String?

    private init(context: OpaquePointer, what: String) {
        self.context = context
        self.what = what
    }

    /// Takes `context` (logged in, no PDUs of the session's left in it), sends the logout and
    /// drives the exchange on a background thread. Returns at once.
    static func start(_ context: OpaquePointer, url: ISCSIURL, timeout: Double = 5) {
        let logout = BackgroundLogout(context: context, what: "\(url)")
        let me = Unmanaged.passUnretained(logout).toOpaque()
        // The PDU's own timeout, so libiscsi reports a silent target too.
        iscsi_set_timeout(context, Int32(max(1, timeout.rounded(.up))))
        guard iscsi_logout_async(context, logoutCallback, me) == 0 else {
            Log.warning("iscsi: logout from \(url) failed: \(ISCSISession.errorText(context))")
            iscsi_destroy_context(context)
            return
        }
        running.enter()
        // Blocks one pool thread for at most `timeout` seconds; the session's queue is free.
        DispatchQueue.global(qos: .utility).async {
            logout.run(deadline: ISCSISession.monotonicNow() + timeout)
            running.leave()
        }
    }

    /// Drives the logout until it ends or `deadline` passes, then destroys the context.
    private func run(deadline: Double) {
        if let reason = ISCSISession.drive(context, until: deadline, timedOut: "no answer within the logout timeout",
                                           finished: { finished }) {
            failure = reason
        }
        // Calls the logout callback (CANCELLED) if it has not run; `self` is still alive.
        iscsi_destroy_context(context)
        if let failure {
            Log.warning("iscsi: logout from \(what) failed: \(failure); connection dropped")
        } else {
            Log.debug("iscsi: logged out of \(what)")
        }
    }

    fileprivate func logoutEnded(status: Int32) {
        guard !finished else { return }
        finished = true
        if status != LibISCSIStatus.good && failure == nil {
            failure = status == LibISCSIStatus.cancelled ? "cancelled" : ISCSISession.errorText(context)
        }
    }
}

/// `privateData` is the BackgroundLogout, alive until its context is destroyed.
private let logoutCallback: iscsi_command_cb = { _, status, _, privateData in
    guard let privateData else { return }
    Unmanaged<BackgroundLogout>.fromOpaque(privateData).takeUnretainedValue().logoutEnded(status: status)
}

extension ISCSISession {
    /// Waits at most `timeout` seconds for the logouts of closed sessions still talking to
    /// their targets (`close()` does not wait for them). Call before the process exits, so
    /// targets that answer see a clean logout. Returns whether all of them ended.
    @discardableResult
    public static func waitForBackgroundLogouts(timeout: Double) -> Bool {
        BackgroundLogout.running.wait(timeout: .now() + timeout) == .success
    }
}
