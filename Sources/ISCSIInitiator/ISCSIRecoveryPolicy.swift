/// How an `ISCSISession` notices a dead target and rides out an outage (Docs/OUTAGES.md).
///
/// - A lost connection (the target closed or reset it, the socket failed) or a target found
///   dead (keep-alive or command silence, below) starts an *outage*. The session reconnects by
///   itself with the same ISID (session reinstatement), at most `maxReconnectDelay` seconds
///   apart, each attempt bounded by `loginTimeout`.
/// - During the first `outageTimeout` seconds of an outage, commands in flight and new ones
///   are held; after the login they are sent again, in submission order, and complete
///   normally. The target's UNIT ATTENTION for the new I_T nexus reaches the caller with the
///   first command that gets it (the guest retries it).
/// - Past `outageTimeout`, every held command and every new one completes with
///   `.transportFailure` at once, while reconnect attempts go on; the first successful login
///   ends the outage and commands are served again.
/// - Keep-alive: while logged in, a NOP-Out every `keepaliveInterval` seconds; when
///   `keepaliveMaxMissed` of them are unanswered the target is declared dead.
/// - Command silence: a command outstanding for more than `commandTimeout` seconds while
///   nothing at all came from the target for that long also declares it dead. A target that is
///   slow but answers (NOP-Ins, other responses) is never disconnected for being slow.
///
/// An outage found by keep-alive or command silence is dated from the last time the target
/// was heard from (or the oldest waiting command, if later), so the guest's wait is bounded by
/// about `outageTimeout` whichever way the target failed.
public struct ISCSIRecoveryPolicy: Sendable, Equatable {
    /// Seconds an outage is ridden out before commands fail with `.transportFailure`.
    /// 0 fails them as soon as the connection is lost. Default 20: below Linux's 30 s SCSI
    /// command timeout (a virtio-scsi guest never times a command out itself, so this bound is
    /// what turns a dead target into an I/O error the guest can act on).
    public var outageTimeout: Double
    /// Seconds between keep-alive NOP-Outs while logged in; 0 disables keep-alive. Default 5.
    public var keepaliveInterval: Double
    /// Unanswered NOP-Outs after which the connection is declared dead. Default 3.
    public var keepaliveMaxMissed: Int
    /// Seconds a command may wait while the target sends nothing at all before the connection
    /// is declared dead; 0 disables. Default 15.
    public var commandTimeout: Double
    /// Longest pause between two reconnect attempts, in seconds. Default 2. (libiscsi's own
    /// reconnect backs off to 30 s, which would keep a recovered target unused for that long.)
    public var maxReconnectDelay: Double
    /// Bound on one reconnect attempt (TCP connect plus login), in seconds. Default 5.
    public var loginTimeout: Double

    public init(outageTimeout: Double = 20, keepaliveInterval: Double = 5, keepaliveMaxMissed: Int = 3,
                commandTimeout: Double = 15, maxReconnectDelay: Double = 2, loginTimeout: Double = 5) {
        precondition(outageTimeout >= 0 && keepaliveInterval >= 0 && commandTimeout >= 0,
                     "timeouts must not be negative")
        precondition(keepaliveMaxMissed >= 1, "keepaliveMaxMissed must be at least 1")
        precondition(maxReconnectDelay > 0 && loginTimeout > 0, "reconnect delays must be positive")
        self.outageTimeout = outageTimeout
        self.keepaliveInterval = keepaliveInterval
        self.keepaliveMaxMissed = keepaliveMaxMissed
        self.commandTimeout = commandTimeout
        self.maxReconnectDelay = maxReconnectDelay
        self.loginTimeout = loginTimeout
    }

    public static let `default` = ISCSIRecoveryPolicy()
}

/// What a session's connection is doing, for logs and tests.
public struct ISCSIConnectionStatus: Sendable, Equatable {
    /// Logged in and sending commands.
    public var loggedIn: Bool
    /// In an outage longer than `outageTimeout`: commands fail at once.
    public var failingCommands: Bool
    /// Outages that ended with a new login.
    public var reconnects: Int
    /// Outages started (connection lost or target declared dead).
    public var outages: Int
    /// Length of the last outage that ended, in seconds.
    public var lastOutageSeconds: Double?
    /// Commands held for re-sending right now.
    public var heldCommands: Int
}
