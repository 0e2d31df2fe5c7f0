import Dispatch
import EventPoller
import Glibc
internal import CLibISCSI
import SCSICore
import ServerLog

/// One iSCSI session (one libiscsi context, one TCP connection) to the target of a URL,
/// implementing `SCSITargetSession`.
///
/// Confinement: the session lives on the serial `queue` given at init. Every method is called
/// on that queue (the synchronous startup helpers may also be called from elsewhere before any
/// I/O: they hop onto the queue), and every completion and task-management reply is delivered
/// on it. It is `@unchecked Sendable` only so that its reference can be handed to that queue.
///
/// Tokens: a command's token is a slot index, `0..<maxOutstanding`. Each slot is preallocated,
/// so submitting and completing a command allocates nothing on the Swift side. Submitting a
/// token that is still outstanding, or one out of range, is a programmer error (precondition).
///
/// Events: a read source (or the `FDPoller` given at init) on libiscsi's socket, a write source armed only while libiscsi has
/// queued output it could not write at once, and a 1 s timer that lets libiscsi run its
/// timeouts and drives keep-alive, outage and reconnect (`ISCSIRecoveryPolicy`). libiscsi's
/// own automatic reconnect is off: the session reconnects itself (ISCSISession+Recovery.swift)
/// and re-sends the commands that were in flight; the sources follow the new socket.
///
/// Writing: `submit` queues PDUs; they are written when the current turn of the queue ends
/// (the session schedules one flush per turn), or at once by `flush()`. A caller that submits
/// a batch can call `flush()` after the batch to save the extra turn.
public final class ISCSISession: SCSITargetSession, @unchecked Sendable {
    public let url: ISCSIURL
    public let initiatorName: String
    /// How the session logs in, at first and on every reconnect.
    public let loginSettings: ISCSILoginSettings
    /// `loginSettings` with the URL's credentials folded in.
    let login: ResolvedLogin
    public let queue: DispatchQueue
    /// Watches the socket instead of Dispatch sources when given (its queue is `queue`).
    let poller: FDPoller?
    public let maxOutstanding: Int
    public let isid: ISCSIISID
    /// Not retained: the owner of the session is usually its sink.
    public weak var completionSink: SCSICompletionSink?
    /// Completions are delivered in batches, one per `iscsi_service` call.
    public var deliversCompletionsInBatches: Bool { true }
    /// True while `service` runs libiscsi; completions then wait for the batch end.
    var servicing = false
    var completedInBatch = false

    /// The libiscsi context; nil once closed.
    var context: OpaquePointer?
    /// `maxOutstanding` slots, indexed by token.
    let slots: UnsafeMutablePointer<CommandSlot>
    var outstandingCount = 0
    var events: EventSources?
    /// Old sources whose cancel handler has not run yet (see `removeSources`).
    var sourcesBeingCancelled = 0
    /// Read events since the last timer tick, for the stalled-source backstop.
    var readEventsSinceTick = 0
    var timer: DispatchSourceTimer?
    var flushScheduled = false
    /// > 0 while libiscsi code runs and may call back into the session. `close()` there only
    /// cancels; the context is destroyed when libiscsi has returned.
    var libiscsiDepth = 0
    /// Set by `close()`: no new work is accepted.
    var closed = false
    var finishClosePending = false
    var tearingDown = false
    /// Tasks completed towards the sink that libiscsi may still hold (cancelled while it was
    /// reconnecting): freed when libiscsi calls them back or when the context is destroyed.
    var orphanedTasks: [UnsafeMutablePointer<scsi_task>] = []
    var pendingTaskManagement: [TaskManagementRequest] = []
    let onQueueKey = DispatchSpecificKey<UInt8>()

    // MARK: Recovery state (ISCSISession+Recovery.swift)

    /// How outages are detected and ridden out.
    public let recovery: ISCSIRecoveryPolicy
    /// The level of the "logged in" and "closed session" lines (the initializer's argument).
    let lifecycleLogLevel: LogLevel
    /// Logged in on `context`. False during an outage and before the first login of a session
    /// made by `loggingInInBackground`, when `context` is nil or an attempt's context that is
    /// not logged in yet.
    var linkUp: Bool
    /// A session made by `loggingInInBackground` that has not logged in yet: its attempts are
    /// the first login, not a reconnect (logs and counters say so).
    var firstLoginPending: Bool
    /// The outage has lasted longer than `recovery.outageTimeout`: commands fail at once.
    var failingCommands = false
    /// When the current outage began (monotonic seconds).
    var outageStart: Double = 0
    /// A loss noticed inside a libiscsi call, handled when libiscsi has returned.
    var lossPending: (reason: String, since: Double?)?
    /// The reconnect attempt whose context is `context`, if one is running.
    var attempt: ReconnectAttempt?
    /// Attempts in this outage; bumps invalidate delayed attempt starts.
    var attemptNumber = 0
    var attemptGeneration: UInt64 = 0
    /// A host name lookup for an attempt is queued or running (ISCSISession+HostLookup.swift).
    var hostLookupRunning = false
    /// For logging attempt failures once per reason (and then every 10 s).
    var lastAttemptFailure: String?
    var lastAttemptFailureLogged: Double = 0
    /// Last time anything arrived from the target.
    var lastHeard: Double
    var nextKeepalive: Double
    var submitSequence: UInt64 = 0
    var outages = 0
    var reconnects = 0
    var lastOutageSeconds: Double?
    /// Commands delivered with `.transportFailure` (ISCSISession+Counters.swift).
    var commandFailures: UInt64 = 0
    /// Failed attempts of the first login (`loggingInInBackground`).
    var firstLoginFailures: UInt64 = 0

    /// Connects and logs in synchronously (blocking the calling thread, at most about
    /// `loginTimeout` seconds plus TCP connect time), checking that `url.lun` answers. Same as
    /// the `login:` initializer with `ISCSILoginSettings(initiatorName: initiatorName)`: CHAP
    /// only from the URL, header digest prefer-none.
    ///
    /// - Parameters:
    ///   - initiatorName: this initiator's IQN; together with `isid` it names the I_T nexus.
    ///   - queue: the serial queue the session is confined to.
    ///   - maxOutstanding: number of tokens (slots), `1...65536`.
    ///   - isid: defaults to `ISCSIISID.next()`, distinct for every session of the process.
    ///   - recovery: keep-alive, reconnect and outage policy (`ISCSIRecoveryPolicy`).
    /// - Throws: `ISCSIError` whose description names the URL and libiscsi's reason.
    public convenience init(url: ISCSIURL, initiatorName: String, queue: DispatchQueue,
                            maxOutstanding: Int = 256, isid: ISCSIISID? = nil,
                            loginTimeout: Int = 15, recovery: ISCSIRecoveryPolicy = .default) throws(ISCSIError) {
        try self.init(url: url, login: ISCSILoginSettings(initiatorName: initiatorName), queue: queue,
                      maxOutstanding: maxOutstanding, isid: isid, loginTimeout: loginTimeout, recovery: recovery)
    }

    /// Connects and logs in synchronously with `login` (initiator name, CHAP, mutual CHAP,
    /// header digest), which every reconnect uses too. The settings are checked against the
    /// URL's own credentials first (`ISCSILoginSettings.validate(for:)`); a conflict throws
    /// `.configuration` before anything is sent.
    ///
    /// `poller`, if given, must serve `queue`: the socket is then watched by its thread
    /// (no libdispatch wake-ups per event) instead of by Dispatch sources.
    ///
    /// `lifecycleLogLevel`: the level of the "logged in" and "closed session" lines; a short
    /// check of a LUN (the server's startup probe) passes `.debug`, so that a server with many
    /// LUNs logs one line per LUN at start, not three.
    public convenience init(url: ISCSIURL, login settings: ISCSILoginSettings, queue: DispatchQueue,
                            maxOutstanding: Int = 256, isid: ISCSIISID? = nil,
                            loginTimeout: Int = 15, recovery: ISCSIRecoveryPolicy = .default,
                            poller: FDPoller? = nil, lifecycleLogLevel: LogLevel = .info) throws(ISCSIError) {
        Self.checkArguments(queue: queue, maxOutstanding: maxOutstanding, poller: poller)
        let isid = isid ?? ISCSIISID.next()
        let login = try settings.resolved(for: url)
        let context = try Self.connect(url: url, login: login, isid: isid, loginTimeout: loginTimeout)
        self.init(url: url, settings: settings, login: login, queue: queue, maxOutstanding: maxOutstanding,
                  isid: isid, recovery: recovery, poller: poller, loggedIn: context, lifecycleLogLevel: lifecycleLogLevel)
    }

    /// A session that returns at once, before any connection, and logs in in the background
    /// through the reconnect machinery (ISCSISession+Recovery.swift): attempt 1 starts now, and
    /// failed attempts are retried as during an outage (each logged once per new reason).
    /// Commands submitted meanwhile are held and sent after the login; when `recovery`'s
    /// outage timeout passes first they fail with `.transportFailure`, exactly as during an
    /// outage. For request queues, which must not block on a target that is down; a caller
    /// that wants an unreachable target to be an error (a startup check) uses the initializer.
    /// A host name in `url` is looked up off `queue`, anew for every attempt
    /// (ISCSISession+HostLookup.swift).
    ///
    /// - Throws: only what can be known without the target: `.configuration` (the settings),
    ///   `.contextCreation`.
    public static func loggingInInBackground(url: ISCSIURL, login settings: ISCSILoginSettings, queue: DispatchQueue,
                                             maxOutstanding: Int = 256, isid: ISCSIISID? = nil,
                                             recovery: ISCSIRecoveryPolicy = .default,
                                             poller: FDPoller? = nil) throws(ISCSIError) -> ISCSISession {
        checkArguments(queue: queue, maxOutstanding: maxOutstanding, poller: poller)
        let isid = isid ?? ISCSIISID.next()
        let login = try settings.resolved(for: url)
        // What makes a context fail fails every attempt: say so now, not in a retry loop.
        iscsi_destroy_context(try makeContext(url: url, login: login, isid: isid))
        return ISCSISession(url: url, settings: settings, login: login, queue: queue, maxOutstanding: maxOutstanding,
                            isid: isid, recovery: recovery, poller: poller, loggedIn: nil)
    }

    private static func checkArguments(queue: DispatchQueue, maxOutstanding: Int, poller: FDPoller?) {
        precondition((1...65536).contains(maxOutstanding), "maxOutstanding must be 1...65536")
        precondition(poller == nil || poller!.queue === queue, "the poller must serve the session's queue")
        precondition(Self.iovecLayoutMatches, "struct scsi_iovec does not match struct iovec")
    }

    /// `loggedIn`: the context of a synchronous login, or nil to log in in the background.
    private init(url: ISCSIURL, settings: ISCSILoginSettings, login: ResolvedLogin, queue: DispatchQueue,
                 maxOutstanding: Int, isid: ISCSIISID, recovery: ISCSIRecoveryPolicy, poller: FDPoller?,
                 loggedIn context: OpaquePointer?, lifecycleLogLevel: LogLevel = .info) {
        self.url = url
        self.lifecycleLogLevel = lifecycleLogLevel
        self.initiatorName = settings.initiatorName
        self.loginSettings = settings
        self.login = login
        self.queue = queue
        self.poller = poller
        self.maxOutstanding = maxOutstanding
        self.isid = isid
        self.context = context
        self.recovery = recovery
        let now = Self.monotonicNow()
        self.lastHeard = now
        self.nextKeepalive = now + recovery.keepaliveInterval
        self.linkUp = context != nil
        self.firstLoginPending = context == nil
        self.slots = UnsafeMutablePointer<CommandSlot>.allocate(capacity: maxOutstanding)
        let owner = Unmanaged.passUnretained(self)
        for token in 0..<maxOutstanding {
            (slots + token).initialize(to: CommandSlot(owner: owner, token: token))
        }
        queue.setSpecific(key: onQueueKey, value: 1)
        if context != nil {
            Log.log(lifecycleLogLevel, "iscsi: logged in to \(url) \(login.summary) isid \(isid)")
            // A poller's registrations are made on its queue (Dispatch sources can be made anywhere).
            if poller != nil { onQueue { startEvents() } } else { startEvents() }
        } else {
            // The first attempt's context and its sources belong to the queue.
            onQueue {
                startEvents()
                startFirstLogin()
            }
        }
    }

    deinit {
        close()
        queue.setSpecific(key: onQueueKey, value: nil)
        slots.deinitialize(count: maxOutstanding)
        slots.deallocate()
    }

    public func isOutstanding(token: Int) -> Bool {
        guard token >= 0 && token < maxOutstanding else { return false }
        return slots[token].state != .idle
    }

    /// Completes every outstanding command with `.aborted`, then hands the libiscsi context to
    /// a background logout (`BackgroundLogout`: the target gets its logout if it answers within
    /// 5 s, then the connection is dropped) and returns without waiting for the target.
    /// Idempotent. Commands are completed before `close` returns; task-management functions
    /// still waiting for the target are answered `.failed`. Safe to call from a completion or
    /// a reply. `ISCSISession.waitForBackgroundLogouts` waits for the logouts (process exit).
    public func close() {
        guard !closed else { return }
        closed = true
        stopEvents()
        cancelOutstanding(outcome: .aborted) { _ in true }
        // Inside a libiscsi callback the context cannot be destroyed yet: `withLibiscsi`
        // finishes the close when libiscsi has returned.
        if libiscsiDepth > 0 { finishClosePending = true } else { finishClose() }
    }

    /// Lets go of the context: logged in, it goes to a background logout; otherwise (closed
    /// during an outage or before the first login) it is destroyed at once, which sends nothing.
    /// Runs once, outside any libiscsi call.
    func finishClose() {
        guard !tearingDown else { return }
        tearingDown = true
        if let ctx = context {
            context = nil
            iscsi_set_noautoreconnect(ctx, 1)
            libiscsiDepth += 1
            if linkUp, iscsi_is_logged_in(ctx) != 0 {
                // Every PDU that calls back into this session (commands, orphaned tasks, task
                // management) is called back CANCELLED now, while the session is alive; after
                // this the context holds nothing of the session's and may outlive it.
                iscsi_scsi_cancel_all_tasks(ctx)
                BackgroundLogout.start(ctx, url: url)
            } else {
                // Calls back every PDU still queued with SCSI_STATUS_CANCELLED.
                iscsi_destroy_context(ctx)
            }
            libiscsiDepth -= 1
        }
        // Anything libiscsi did not call back is completed here; its task is ours to free
        // (no libiscsi queue holds it any more).
        cancelOutstanding(outcome: .aborted) { _ in true }
        for task in orphanedTasks { scsi_free_scsi_task(task) }
        orphanedTasks.removeAll()
        answerPendingTaskManagement(.failed)
        Log.log(lifecycleLogLevel, "iscsi: closed session to \(url)")
    }

    /// Answers every task management function still waiting for the target.
    func answerPendingTaskManagement(_ response: SCSITaskManagementResponse) {
        let unanswered = pendingTaskManagement
        pendingTaskManagement.removeAll()
        for request in unanswered where !request.answered {
            request.answered = true
            request.reply(response)
        }
    }

    /// Runs libiscsi code that may call back into the session; finishes a `close()` made from
    /// such a callback once the outermost libiscsi call has returned. Callers must re-check
    /// `context` afterwards.
    @inline(__always)
    func withLibiscsi<T>(_ body: () -> T) -> T {
        libiscsiDepth += 1
        let result = body()
        libiscsiDepth -= 1
        if libiscsiDepth == 0 {
            if finishClosePending {
                finishClosePending = false
                finishClose()
            } else if lossPending != nil || attempt?.result != nil {
                handleRecoveryEvents()
            }
        }
        return result
    }

    /// Runs `body` on the session's queue, synchronously (for the startup helpers).
    func onQueue<T>(_ body: () -> T) -> T {
        if DispatchQueue.getSpecific(key: onQueueKey) != nil { return body() }
        return queue.sync(execute: body)
    }

    func lastError(_ ctx: OpaquePointer) -> String {
        guard let message = iscsi_get_error(ctx) else { return "unknown error" }
        let text = String(cString: message).split(whereSeparator: \.isNewline).joined(separator: " ")
        return text.isEmpty ? "unknown error" : text
    }
}

/// A value moved into a `@Sendable` closure that runs on the session's queue, where the value
/// came from. Used for reply closures, which the protocol does not require to be Sendable.
struct QueueConfined<Value>: @unchecked Sendable {
    let value: Value
}
