import Dispatch
import Glibc
internal import CLibISCSI
import SCSICore
import ServerLog

/// One reconnect attempt: a fresh libiscsi context (it is the session's `context` while the
/// attempt runs) doing TCP connect, then login.
final class ReconnectAttempt {
    enum Result {
        case succeeded
        case failed(String)
    }

    let number: Int
    /// When the attempt fails as unanswered: `loginTimeout` after it started, and again after
    /// its host name was looked up (ISCSISession+HostLookup.swift).
    var deadline: Double
    /// Its portal's host name is being looked up; no context yet.
    var resolving = false
    /// The TCP connection is up; the login runs.
    var connected = false
    /// Set by the libiscsi callbacks; acted on once libiscsi has returned.
    var result: Result?

    init(number: Int, deadline: Double) {
        self.number = number
        self.deadline = deadline
    }
}

/// NOP-Out replies need no handling: libiscsi counts the unanswered ones.
private let keepaliveCallback: iscsi_command_cb = { _, _, _, _ in }

/// `privateData` is the session, unretained: it destroys every context before it goes away.
private let attemptConnectCallback: iscsi_command_cb = { ctx, status, _, privateData in
    guard let ctx, let privateData else { return }
    Unmanaged<ISCSISession>.fromOpaque(privateData).takeUnretainedValue().attemptConnected(ctx, status: status)
}

private let attemptLoginCallback: iscsi_command_cb = { ctx, status, _, privateData in
    guard let ctx, let privateData else { return }
    Unmanaged<ISCSISession>.fromOpaque(privateData).takeUnretainedValue().attemptLoggedIn(ctx, status: status)
}

/// Outage handling (`ISCSIRecoveryPolicy`, Docs/OUTAGES.md).
///
/// libiscsi's automatic reconnect is switched off on every context: it blocks on nothing, but
/// it backs off to 30 s between attempts, keeps the commands in a hidden context where they
/// can be neither cancelled nor failed safely (cancelling goes by ITT, and a command failed
/// towards the guest would still be re-sent later, with guest buffers the guest has reused),
/// and its login TUR swallows the target's unit attention. Instead, a lost connection is
/// destroyed (libiscsi hands every command back, CANCELLED, and the session *holds* it), a new
/// context logs in with the same ISID, and the held commands are sent again as new tasks.
extension ISCSISession {
    /// CLOCK_MONOTONIC_COARSE in seconds: cheap enough for every submit.
    static func monotonicNow() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// The connection's state (from any thread; hops onto the queue).
    public var connectionStatus: ISCSIConnectionStatus {
        onQueue {
            var held = 0
            for token in 0..<maxOutstanding where slots[token].state == .held { held += 1 }
            return ISCSIConnectionStatus(loggedIn: linkUp && context != nil, failingCommands: failingCommands,
                                         reconnects: reconnects, outages: outages,
                                         lastOutageSeconds: lastOutageSeconds, heldCommands: held)
        }
    }

    // MARK: - Losing the connection

    /// Starts an outage: the connection is gone (`reason`), or the target was declared dead,
    /// in which case `since` dates the outage back to when it was last heard from. Inside a
    /// libiscsi call it only records the loss; `withLibiscsi` comes back here afterwards.
    func connectionLost(_ reason: String, since: Double? = nil) {
        guard linkUp, !closed, !tearingDown else { return }
        if libiscsiDepth > 0 {
            if lossPending == nil { lossPending = (reason, since) }
            return
        }
        lossPending = nil
        let now = Self.monotonicNow()
        linkUp = false
        failingCommands = false
        outageStart = min(since ?? now, now)
        outages += 1
        attemptNumber = 0
        lastAttemptFailure = nil
        Log.warning("iscsi: connection to \(url) lost: \(reason); reconnecting, commands are held for up to "
                    + "\(Self.seconds(recovery.outageTimeout)) s")
        detachContext()
        checkOutage(now: now)
        scheduleOutageCheck(now: now)
        startAttempt()
    }

    /// Starts the first login of a session made by `loggingInInBackground`: like an outage
    /// that begins now (commands held, then failed past the outage timeout), but not counted
    /// as one. Attempt 1 starts at once.
    func startFirstLogin() {
        guard firstLoginPending, !closed else { return }
        let now = Self.monotonicNow()
        outageStart = now
        attemptNumber = 0
        // The outcome is logged: "logged in ..." or "login to ... failed ...; retrying".
        Log.debug("iscsi: logging in to \(url) \(login.summary) isid \(isid) in the background; commands are held "
                  + "for up to \(Self.seconds(recovery.outageTimeout)) s")
        checkOutage(now: now)
        scheduleOutageCheck(now: now)
        startAttempt()
    }

    /// Checks the outage timeout of the outage that began at `outageStart` right when it
    /// passes: the timer would be up to a second late.
    private func scheduleOutageCheck(now: Double) {
        guard !failingCommands else { return }
        let outages = self.outages
        queue.asyncAfter(deadline: .now() + max(0, outageStart + recovery.outageTimeout - now)) { @Sendable [weak self] in
            guard let self, self.outages == outages, !self.closed else { return }
            self.checkOutage(now: Self.monotonicNow() + 0.001)
        }
    }

    /// The target has not answered: treat it as a lost connection.
    func declareDead(_ reason: String, since: Double) {
        connectionLost("the target does not answer (\(reason))", since: since)
    }

    /// Runs what libiscsi callbacks recorded, once libiscsi has returned (depth 0).
    func handleRecoveryEvents() {
        guard libiscsiDepth == 0, !closed else { return }
        if let loss = lossPending {
            lossPending = nil
            connectionLost(loss.reason, since: loss.since)
        }
        if let attempt, let result = attempt.result {
            switch result {
            case .succeeded: attemptSucceeded()
            case .failed(let reason): attemptFailed(reason)
            }
        }
    }

    /// Destroys the current context, if any. Commands libiscsi held come back CANCELLED and are
    /// held (see `commandCallback`); task management still waiting is answered `.failed`.
    func detachContext() {
        precondition(libiscsiDepth == 0, "detachContext inside a libiscsi call")
        removeSources()
        attempt = nil
        guard let ctx = context else { return }
        context = nil
        libiscsiDepth += 1
        iscsi_destroy_context(ctx)
        libiscsiDepth -= 1
        // Anything libiscsi did not hand back is not in any queue now either.
        for token in 0..<maxOutstanding where slots[token].state == .inFlight || slots[token].state == .submitting {
            slots[token].state = .held
        }
        for task in orphanedTasks { scsi_free_scsi_task(task) }
        orphanedTasks.removeAll()
        if !pendingTaskManagement.isEmpty {
            Log.warning("iscsi: \(pendingTaskManagement.count) task management function(s) to \(url) "
                        + "failed with the connection")
            answerPendingTaskManagement(.failed)
        }
    }

    // MARK: - Reconnect attempts

    func startAttempt() {
        guard !linkUp, !closed, attempt == nil, context == nil else { return }
        attemptNumber += 1
        attemptGeneration &+= 1
        let attempt = ReconnectAttempt(number: attemptNumber, deadline: Self.monotonicNow() + recovery.loginTimeout)
        self.attempt = attempt
        Log.debug("iscsi: reconnect attempt \(attempt.number) to \(url)")
        beginAttempt(attempt)
    }

    /// The attempt's connect and login to `portal`, a numeric `address:port` (given a name,
    /// libiscsi would look it up inside `iscsi_connect_async`, blocking the queue: see
    /// `beginAttempt`).
    func connectAttempt(_ attempt: ReconnectAttempt, portal: String) {
        let ctx: OpaquePointer
        do {
            ctx = try Self.makeContext(url: url, login: login, isid: isid)
        } catch {
            self.attempt = nil
            noteAttemptFailure("\(error)", number: attempt.number)
            scheduleAttempt(after: recovery.maxReconnectDelay)
            return
        }
        iscsi_set_timeout(ctx, Int32(max(1, recovery.loginTimeout.rounded(.up))))
        context = ctx
        let me = Unmanaged.passUnretained(self).toOpaque()
        let rc = withLibiscsi {
            firstLoginPending
                // A first login checks the LUN and clears the new I_T nexus's unit attention
                // (POWER ON OCCURRED, SAM-5 §5.14) with TEST UNIT READY, as the synchronous
                // login does: the guest saw no reset. A reconnect leaves the target's unit
                // attentions to the guest (the target may really have been reset).
                ? iscsi_full_connect_async(ctx, portal, Int32(url.lun), attemptLoginCallback, me)
                : iscsi_connect_async(ctx, portal, attemptConnectCallback, me)
        }
        if rc != 0, self.attempt === attempt, attempt.result == nil {
            attempt.result = .failed(lastError(ctx))
            handleRecoveryEvents()
        }
        if context != nil { followSocket() }
    }

    /// libiscsi: the TCP connection of an attempt is up (or failed).
    func attemptConnected(_ ctx: OpaquePointer, status: Int32) {
        guard ctx == context, let attempt, attempt.result == nil else { return }
        guard status == LibISCSIStatus.good else {
            attempt.result = .failed("cannot connect: " + (socketError(ctx) ?? lastError(ctx)))
            return
        }
        attempt.connected = true
        let me = Unmanaged.passUnretained(self).toOpaque()
        if iscsi_login_async(ctx, attemptLoginCallback, me) != 0 {
            attempt.result = .failed(lastError(ctx))
        }
    }

    /// libiscsi: the login of an attempt ended.
    func attemptLoggedIn(_ ctx: OpaquePointer, status: Int32) {
        guard ctx == context, let attempt, attempt.result == nil else { return }
        attempt.result = status == LibISCSIStatus.good
            ? .succeeded : .failed("login failed: " + Self.explain(lastError(ctx), url: url, login: login))
    }

    func attemptFailed(_ reason: String) {
        guard let attempt else { return }
        let number = attempt.number
        detachContext()
        noteAttemptFailure(reason, number: number)
        // 0.25, 0.5, 1, 2... seconds, capped.
        let delay = min(recovery.maxReconnectDelay, 0.25 * Double(1 << min(number - 1, 10)))
        scheduleAttempt(after: delay)
    }

    private func noteAttemptFailure(_ reason: String, number: Int) {
        let now = Self.monotonicNow()
        if firstLoginPending { firstLoginFailures &+= 1 }
        // One line per new reason, and a reminder every 10 s.
        if reason != lastAttemptFailure || now - lastAttemptFailureLogged >= 10 {
            if firstLoginPending {
                Log.warning("iscsi: login to \(url) failed (attempt \(number), trying for \(Self.seconds(now - outageStart)) s): "
                            + "\(reason); retrying, commands are held for up to \(Self.seconds(recovery.outageTimeout)) s")
            } else {
                Log.warning("iscsi: reconnect to \(url) failed (attempt \(number), down \(Self.seconds(now - outageStart)) s): \(reason)")
            }
            lastAttemptFailure = reason
            lastAttemptFailureLogged = now
        }
    }

    private func scheduleAttempt(after delay: Double) {
        attemptGeneration &+= 1
        let generation = attemptGeneration
        queue.asyncAfter(deadline: .now() + delay) { @Sendable [weak self] in
            guard let self, self.attemptGeneration == generation else { return }
            self.startAttempt()
        }
    }

    func attemptSucceeded() {
        guard let ctx = context, let attempt else { return }
        self.attempt = nil
        // Commands have no libiscsi timeout (a slow target is not a dead one); only the login had.
        iscsi_set_timeout(ctx, 0)
        let now = Self.monotonicNow()
        linkUp = true
        let wasFailing = failingCommands
        failingCommands = false
        let firstLogin = firstLoginPending
        firstLoginPending = false
        if !firstLogin {
            lastOutageSeconds = now - outageStart
            reconnects += 1
        }
        lastHeard = now
        nextKeepalive = now + recovery.keepaliveInterval
        lastAttemptFailure = nil
        var held: [Int] = []
        for token in 0..<maxOutstanding where slots[token].state == .held { held.append(token) }
        held.sort { slots[$0].sequence < slots[$1].sequence }
        Log.info("iscsi: " + (firstLogin ? "logged in to \(url) \(login.summary) isid \(isid)" : "reconnected to \(url)")
                 + " after \(Self.seconds(now - outageStart)) s (attempt \(attempt.number))"
                 + (wasFailing ? "; serving commands again" : "")
                 + (held.isEmpty ? "" : "; " + (firstLogin ? "sending" : "re-sending") + " \(held.count) held command(s)"))
        for token in held {
            // A send can notice a failed connection; the rest stay held for the next login.
            guard linkUp, context == ctx else { break }
            resend(slots + token, ctx: ctx, now: now)
        }
        followSocket()
        scheduleFlush()
    }

    // MARK: - The timer

    /// Once a second: keep-alive and command silence while logged in; outage timeout and
    /// attempt deadline during an outage. `heard`: data arrived since the last tick.
    func recoveryTick(heard: Bool) {
        guard !closed else { return }
        let now = Self.monotonicNow()
        if linkUp {
            if heard { lastHeard = now }
            checkKeepalive(now: now)
            if linkUp { checkCommandSilence(now: now) }
            if linkUp { checkTaskManagementSilence(now: now) }
        } else {
            checkOutage(now: now)
            if let attempt, attempt.result == nil, now >= attempt.deadline {
                attempt.result = .failed(attempt.resolving
                    ? "cannot resolve \(url.host) within \(Self.seconds(recovery.loginTimeout)) s"
                    : "no answer within \(Self.seconds(recovery.loginTimeout)) s")
                handleRecoveryEvents()
            }
        }
    }

    private func checkKeepalive(now: Double) {
        guard recovery.keepaliveInterval > 0, now >= nextKeepalive, let ctx = context else { return }
        nextKeepalive = now + recovery.keepaliveInterval
        let missed = Int(iscsi_get_nops_in_flight(ctx))
        if missed >= recovery.keepaliveMaxMissed {
            declareDead("\(missed) keep-alive NOP-Outs unanswered", since: lastHeard)
            return
        }
        if withLibiscsi({ iscsi_nop_out_async(ctx, keepaliveCallback, nil, 0, nil) }) != 0 {
            Log.debug("iscsi: cannot send a NOP-Out to \(url): \(context.map(lastError) ?? "session closed")")
        }
        scheduleFlush()
    }

    /// A target that keeps a task management function unanswered (tgt did, with two LUN
    /// resets of one LU at once) would hang the guest's error handling: after the command
    /// timeout the connection is given up, which ends the nexus's tasks at the target, and
    /// the function is answered FAILED.
    private func checkTaskManagementSilence(now: Double) {
        guard recovery.commandTimeout > 0,
              let oldest = pendingTaskManagement.filter({ !$0.answered }).map(\.sentAt).min(),
              now - oldest > recovery.commandTimeout else { return }
        declareDead("a task management function waited \(Self.seconds(now - oldest)) s for an answer", since: oldest)
    }

    private func checkCommandSilence(now: Double) {
        guard recovery.commandTimeout > 0, outstandingCount > 0, now - lastHeard > recovery.commandTimeout else { return }
        var oldest = Double.infinity
        for token in 0..<maxOutstanding where slots[token].state == .inFlight {
            oldest = min(oldest, slots[token].sentAt)
        }
        guard oldest.isFinite, now - oldest > recovery.commandTimeout else { return }
        declareDead("a command waited \(Self.seconds(now - oldest)) s and nothing came from the target for "
                    + "\(Self.seconds(now - lastHeard)) s", since: max(lastHeard, oldest))
    }

    /// Past the outage timeout: fail what is held, and from now on every new command.
    func checkOutage(now: Double) {
        guard !linkUp, !failingCommands, now - outageStart >= recovery.outageTimeout else { return }
        failingCommands = true
        var held = 0
        for token in 0..<maxOutstanding where slots[token].state == .held { held += 1 }
        Log.error("iscsi: \(url) unreachable for \(Self.seconds(now - outageStart)) s: failing \(held) held "
                  + "command(s) and every new one until it is back; still "
                  + (firstLoginPending ? "trying to log in" : "reconnecting"))
        cancelOutstanding(outcome: .transportFailure) { $0.state == .held }
    }

    /// The pending error of `ctx`'s socket, as text ("Connection refused"), if any.
    func socketError(_ ctx: OpaquePointer) -> String? {
        let fd = iscsi_get_fd(ctx)
        guard fd >= 0 else { return nil }
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0, error != 0 else { return nil }
        return String(cString: strerror(error))
    }

    static func seconds(_ value: Double) -> String {
        let tenths = (value * 10).rounded()
        return tenths.truncatingRemainder(dividingBy: 10) == 0 ? "\(Int(tenths / 10))" : "\(tenths / 10)"
    }
}
