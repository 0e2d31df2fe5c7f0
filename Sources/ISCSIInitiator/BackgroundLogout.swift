import Dispatch
import Glibc
internal import CLibISCSI
import ServerLog

/// Logs a closed session's context out of its target away from the session's queue, then
/// destroys the context, so that `ISCSISession.close()` never waits for the target.
///
/// The session hands the context over only once nothing in it can call back into the session:
/// it cancels every PDU first (`iscsi_scsi_cancel_all_tasks` calls each callback, CANCELLED,
/// while the session is alive), and from then on the context is this object's alone, driven
/// by the one logout thread (`LogoutThread`) together with every other closed session's. The
/// only callback left is the logout's, whose `private_data` is this object, kept alive (by
/// the logout thread) until the context is destroyed.
///
/// A target that answers gets its clean logout (RFC 7143 §11.14); a silent one is given
/// `timeout` seconds from the close, then the connection is dropped. Like every libiscsi
/// write (writev), the logout can raise SIGPIPE when the peer is gone: the process must ignore
/// SIGPIPE, as the server does.
final class BackgroundLogout: @unchecked Sendable {
    // @unchecked: made on the closing session's queue, then confined to the logout thread
    // (handed over under the thread's lock).

    /// Every logout still running in the process, for `ISCSISession.waitForBackgroundLogouts`.
    static let running = DispatchGroup()

    let context: OpaquePointer
    /// Monotonic seconds after which the connection is dropped.
    let deadline: Double
    private let what: String
    /// Set by the logout callback (on the logout thread, inside `iscsi_service`).
    private(set) var finished = false
    private(set) var failure: String?

    private init(context: OpaquePointer, what: String, deadline: Double) {
        self.context = context
        self.what = what
        self.deadline = deadline
    }

    /// Takes `context` (logged in, no PDUs of the session's left in it), queues the logout and
    /// hands it to the logout thread. Returns at once.
    static func start(_ context: OpaquePointer, url: ISCSIURL, timeout: Double = 5) {
        let logout = BackgroundLogout(context: context, what: "\(url)", deadline: ISCSISession.monotonicNow() + timeout)
        let me = Unmanaged.passUnretained(logout).toOpaque()
        // The PDU's own timeout, so libiscsi reports a silent target too.
        iscsi_set_timeout(context, Int32(max(1, timeout.rounded(.up))))
        guard iscsi_logout_async(context, logoutCallback, me) == 0 else {
            Log.warning("iscsi: logout from \(url) failed: \(ISCSISession.errorText(context))")
            iscsi_destroy_context(context)
            return
        }
        guard let thread = LogoutThread.shared else {
            // No thread to drive it (could not be started; said once when it failed).
            logout.fail("no logout thread")
            logout.end()
            return
        }
        running.enter()
        thread.adopt(logout)
    }

    /// Records why the logout ends without the target's answer (the first reason counts).
    func fail(_ reason: String) {
        if failure == nil { failure = reason }
    }

    /// Destroys the context and says how the logout ended. Called once, on the logout thread.
    func end() {
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
        if status != LibISCSIStatus.good {
            fail(status == LibISCSIStatus.cancelled ? "cancelled" : ISCSISession.errorText(context))
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
