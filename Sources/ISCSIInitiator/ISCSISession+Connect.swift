import Glibc
internal import CLibISCSI
import ServerLog

/// What the login callback reports to `runLogin`.
final class LoginState {
    var finished = false
    var failure: String?
}

extension ISCSISession {
    /// Creates a context, configures it for a normal session to `url` and logs in
    /// synchronously. Returns the logged-in context or throws a one-line error.
    static func connect(url: ISCSIURL, login: ResolvedLogin, isid: ISCSIISID,
                        loginTimeout: Int) throws(ISCSIError) -> OpaquePointer {
        let ctx = try makeContext(url: url, login: login, isid: isid)
        // Bounds the login PDUs; TCP SYN retries bound the connect (3 retries: about 15 s).
        iscsi_set_timeout(ctx, Int32(clamping: loginTimeout))
        iscsi_set_tcp_syncnt(ctx, 3)
        if let reason = runLogin(ctx, url: url, timeout: loginTimeout) {
            iscsi_destroy_context(ctx)
            throw ISCSIError(.login, "cannot log in to \(url): \(explain(reason, url: url, login: login))")
        }
        // No timeout for commands: a slow target is not a dead one. A dead one is found by
        // keep-alive and command silence (ISCSISession+Recovery.swift).
        iscsi_set_timeout(ctx, 0)
        return ctx
    }

    /// A context configured for a normal session to `url` with `isid` and the credentials and
    /// digest of `login`, not connected. libiscsi's automatic reconnect is off: the session
    /// reconnects itself, with the same `login`.
    static func makeContext(url: ISCSIURL, login: ResolvedLogin, isid: ISCSIISID) throws(ISCSIError) -> OpaquePointer {
        guard !login.initiatorName.isEmpty, let ctx = iscsi_create_context(login.initiatorName) else {
            throw ISCSIError(.contextCreation,
                             "cannot create an iSCSI context for initiator name '\(login.initiatorName)'")
        }
        func fail(_ what: String) -> ISCSIError {
            let reason = iscsi_get_error(ctx).map { String(cString: $0) } ?? "unknown error"
            iscsi_destroy_context(ctx)
            return ISCSIError(.login, "\(what) \(url): \(reason.isEmpty ? "unknown error" : reason)")
        }
        installLogBridge(ctx)
        iscsi_set_isid_random(ctx, isid.random, UInt32(isid.qualifier))
        guard iscsi_set_targetname(ctx, url.target) == 0,
              iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL) == 0,
              iscsi_set_header_digest(ctx, login.headerDigest.libiscsiValue) == 0
        else { throw fail("cannot configure the session to") }
        // libiscsi takes an empty user or secret as "no CHAP": ISCSISecret refuses empty ones.
        if let chap = login.chap {
            guard iscsi_set_initiator_username_pwd(ctx, chap.user, chap.secret.value) == 0 else {
                throw fail("cannot set the CHAP credentials for")
            }
            // Mutual CHAP: the target must answer the initiator's challenge with this name and
            // a response computed with this secret (checked by libiscsi, lib/login.c).
            if let mutual = login.mutualCHAP {
                guard iscsi_set_target_username_pwd(ctx, mutual.user, mutual.secret.value) == 0 else {
                    throw fail("cannot set the mutual CHAP credentials for")
                }
            }
        }
        iscsi_set_noautoreconnect(ctx, 1)
        iscsi_set_tcp_syncnt(ctx, 3)
        return ctx
    }

    /// libiscsi's login failure text with the likely cause named where libiscsi's own words are
    /// cryptic. Names users and where secrets come from, never a secret (libiscsi's texts
    /// contain none either).
    static func explain(_ reason: String, url: ISCSIURL, login: ResolvedLogin) -> String {
        if reason.contains("Authentication failure") {
            guard let chap = login.chap else {
                return "\(reason): the target requires CHAP and none is configured; give a CHAP user and secret "
                    + "(--chap-user with --chap-secret-file or --chap-secret-env)"
            }
            let mutual = login.mutualCHAP == nil ? ""
                : ", or the target has no mutual CHAP (outgoing) account to answer with"
            return "\(reason): the target refused CHAP user '\(chap.user)' with the secret from \(chap.secret.origin) "
                + "(wrong user or secret\(mutual))"
        }
        if let mutual = login.mutualCHAP {
            if reason.contains("Invalid CHAP_R") {
                return "mutual CHAP failed: the target did not prove it knows the mutual CHAP secret from "
                    + "\(mutual.secret.origin) (a different secret on the target, or not the expected target)"
            }
            if let range = reason.firstRange(of: "Wrong CHAP targetname received: ") {
                return "mutual CHAP failed: the target answered as '\(reason[range.upperBound...])', expected "
                    + "'\(mutual.user)'"
            }
            if reason.contains("did not return CHAP_N") || reason.contains("did not return CHAP_R") {
                return "mutual CHAP failed: the target did not authenticate itself (\(reason)); it needs an outgoing "
                    + "account, and must ask for CHAP"
            }
        }
        if reason.contains("Target not found") {
            return "\(reason): \(url.portal) has no target named \(url.target)"
        }
        if reason.contains("Authorization failure") || reason.contains("Initiator error") && reason.contains("(514)") {
            return "\(reason): the target does not allow initiator name \(login.initiatorName)"
        }
        if reason.contains("LOGICAL_UNIT_NOT_SUPPORTED") {
            return "\(reason): the target has no LUN \(url.lun) (on tgt, LUN 0 is the controller and disks start at 1)"
        }
        if reason.contains("Connection refused") || reason.contains("errno:111") {
            return "nothing listens on \(url.portal) (connection refused)"
        }
        return reason
    }

    /// Connects, logs in and checks the LUN (`iscsi_full_connect_async`), driving libiscsi with
    /// poll(2) on the calling thread. Returns nil on success, else the reason. Unlike
    /// `iscsi_full_connect_sync` this keeps the first error (e.g. "Connection refused"), which
    /// libiscsi otherwise overwrites with a message about not being able to reconnect.
    static func runLogin(_ ctx: OpaquePointer, url: ISCSIURL, timeout: Int) -> String? {
        let state = LoginState()
        let statePointer = Unmanaged.passUnretained(state).toOpaque()
        let rc = iscsi_full_connect_async(ctx, url.portal, Int32(url.lun), { ctx, status, _, privateData in
            guard let privateData else { return }
            // SAFETY: privateData is the LoginState kept alive by runLogin until it returns.
            let state = Unmanaged<LoginState>.fromOpaque(privateData).takeUnretainedValue()
            state.finished = true
            if status != LibISCSIStatus.good {
                state.failure = ctx.flatMap { iscsi_get_error($0) }.map { String(cString: $0) } ?? "status \(status)"
            }
        }, statePointer)
        guard rc == 0 else { return errorText(ctx) }
        // Login PDUs time out after `timeout`; this bounds the whole exchange in case they don't.
        let bound = max(timeout, 1) * 2 + 20
        if let reason = drive(ctx, until: monotonicNow() + Double(bound), timedOut: "no answer within \(bound) s",
                              finished: { state.finished }) {
            return reason
        }
        return state.failure.map { $0.isEmpty ? "unknown error" : $0 }
    }

    /// Drives `ctx` with poll(2) on the calling thread until `finished()` holds or `deadline`
    /// (monotonic seconds) passes, for the exchange no queue watches: a synchronous login.
    /// Returns nil once finished, else why not: `timedOut`, a poll failure, or libiscsi's error.
    static func drive(_ ctx: OpaquePointer, until deadline: Double, timedOut: String,
                      finished: () -> Bool) -> String? {
        while !finished() {
            let left = deadline - monotonicNow()
            if left <= 0 { return timedOut }
            let wait = Int32(min(100, max(1, left * 1000)))
            var revents: Int16 = 0
            if var pfd = pollRequest(ctx) {
                let ready = poll(&pfd, 1, wait)
                if ready < 0 && errno != EINTR { return "poll failed: errno \(errno)" }
                if ready > 0 { revents = pfd.revents }
            } else {
                usleep(UInt32(wait) * 1000)
            }
            if let reason = service(ctx, revents: revents, finished: finished) { return reason }
        }
        return nil
    }

    /// One context's part in a poll(2) round (`drive`, and the logout thread's poll over every
    /// closed session's context): what libiscsi waits for on its socket, or nil when it has
    /// no socket yet or nothing to wait for. libiscsi still wants `service` then.
    static func pollRequest(_ ctx: OpaquePointer) -> pollfd? {
        let fd = iscsi_get_fd(ctx)
        let events = Int16(truncatingIfNeeded: iscsi_which_events(ctx))
        return fd < 0 || events == 0 ? nil : pollfd(fd: fd, events: events, revents: 0)
    }

    /// Hands what poll reported for `ctx` to libiscsi (0 for nothing: libiscsi then checks its
    /// PDU timeouts, which it wants about once a second), which may call back. Returns
    /// libiscsi's error, unless `finished()` holds by then (a target may close the connection
    /// right after its last answer).
    static func service(_ ctx: OpaquePointer, revents: Int16, finished: () -> Bool) -> String? {
        iscsi_service(ctx, Int32(revents)) < 0 && !finished() ? errorText(ctx) : nil
    }

    static func errorText(_ ctx: OpaquePointer) -> String {
        let text = iscsi_get_error(ctx).map { String(cString: $0) } ?? ""
        return text.isEmpty ? "unknown error" : text
    }

    /// Sends libiscsi's own messages to `Log` at debug level, and only when debug is on:
    /// libiscsi reports every CHECK CONDITION as an error, which is normal traffic here. The
    /// session logs connections, reconnects and failures itself.
    static func installLogBridge(_ ctx: OpaquePointer) {
        guard Log.enabled(.debug) else { return }
        iscsi_set_log_level(ctx, 2)
        iscsi_set_log_fn(ctx) { _, message in
            guard let message else { return }
            let text = String(cString: message).split(whereSeparator: \.isNewline).joined(separator: " ")
            Log.debug("libiscsi: \(text)")
        }
    }
}
