internal import CLibISCSI
import ServerLog

extension ISCSISession {
    /// Creates a context, configures it for a normal session to `url` and logs in
    /// synchronously. Returns the logged-in context or throws a one-line error.
    static func connect(url: ISCSIURL, initiatorName: String, isid: ISCSIISID,
                        loginTimeout: Int) throws(ISCSIError) -> OpaquePointer {
        guard !initiatorName.isEmpty, let ctx = iscsi_create_context(initiatorName) else {
            throw ISCSIError(.contextCreation,
                             "cannot create an iSCSI context for initiator name '\(initiatorName)'")
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
              iscsi_set_header_digest(ctx, ISCSI_HEADER_DIGEST_NONE_CRC32C) == 0
        else { throw fail("cannot configure the session to") }
        if let user = url.user {
            guard iscsi_set_initiator_username_pwd(ctx, user, url.password ?? "") == 0 else {
                throw fail("cannot set the CHAP credentials for")
            }
        }
        // Bounds the login PDUs; TCP SYN retries bound the connect (3 retries: about 15 s).
        iscsi_set_timeout(ctx, Int32(clamping: loginTimeout))
        iscsi_set_tcp_syncnt(ctx, 3)
        guard iscsi_full_connect_sync(ctx, url.portal, Int32(url.lun)) == 0 else {
            throw fail("cannot log in to")
        }
        // No timeout for commands: a slow target is not a dead one. A lost connection is
        // noticed by TCP and libiscsi reconnects.
        iscsi_set_timeout(ctx, 0)
        return ctx
    }

    /// Sends libiscsi's own error and connection messages to `Log`.
    static func installLogBridge(_ ctx: OpaquePointer) {
        iscsi_set_log_level(ctx, Log.enabled(.debug) ? 2 : 1)
        iscsi_set_log_fn(ctx) { level, message in
            guard let message else { return }
            let text = String(cString: message)
            if level <= 1 {
                Log.warning("libiscsi: \(text)")
            } else {
                Log.debug("libiscsi: \(text)")
            }
        }
    }
}
