import Dispatch
import ServerLog
import Synchronization

/// How host names are looked up: getaddrinfo, or what a test put in its place.
private let hostResolver = Mutex<@Sendable (String, UInt16) -> Result<String, ResolveError>>(
    { host, port in HostLookup.getaddrinfo(host: host, port: port) })

/// The session, weakly, for a lookup thread to hand back to the session's queue: the weak
/// reference is read on the queue only, so the session is never released (and deinitialized)
/// on a lookup thread.
private final class SessionOnQueue: @unchecked Sendable {
    weak var session: ISCSISession?

    init(_ session: ISCSISession) {
        self.session = session
    }
}

/// Host names of the portal in the asynchronous paths (the background first login and every
/// reconnect): libiscsi would resolve a name with a blocking getaddrinfo inside
/// `iscsi_connect_async`, on the session's queue, which is a request queue's: a slow or dead
/// DNS server would stall all of its LUNs for the resolver's timeout. Instead the name is
/// looked up on `HostLookupThreads`, and the attempt goes on on the queue with the numeric
/// address. The name is looked up anew for every attempt (storage failover by DNS works), with
/// no cache. The synchronous login (ISCSISession+Connect.swift) still lets libiscsi resolve: it
/// runs on no request queue.
///
/// While the lookup runs the attempt is under way (`ReconnectAttempt.resolving`, no context):
/// its deadline, `loginTimeout`, bounds the lookup (`recoveryTick` fails it as "cannot
/// resolve ... within"), and the connect and login that follow get a `loginTimeout` of their
/// own. A failed lookup fails the attempt with the resolver's reason; the usual backoff follows.
extension ISCSISession {
    /// Looks up a host name (and port, for the resolver's sake): the first address, numeric
    /// (IPv6 without brackets), or why not. Runs on a lookup thread. getaddrinfo unless a
    /// test replaced it; read when an attempt starts its lookup.
    static var resolveHost: @Sendable (_ host: String, _ port: UInt16) -> Result<String, ResolveError> {
        get { hostResolver.withLock { $0 } }
        set { hostResolver.withLock { $0 = newValue } }
    }

    /// Goes on with `attempt` once its portal's address is known: at once for an address
    /// literal, else after a lookup off the queue.
    func beginAttempt(_ attempt: ReconnectAttempt) {
        guard !HostLookup.isNumericAddress(url.host) else {
            connectAttempt(attempt, portal: url.portal)
            return
        }
        attempt.resolving = true
        // A lookup still under way for an attempt that timed out answers this one instead:
        // one lookup per session at a time, however slow the resolver.
        guard !hostLookupRunning else {
            Log.debug("iscsi: attempt \(attempt.number) to \(url) waits for the lookup of \(url.host) under way")
            return
        }
        hostLookupRunning = true
        let host = url.host
        let port = UInt16(url.port)
        let resolve = Self.resolveHost
        let queue = self.queue
        let target = SessionOnQueue(self)
        HostLookupThreads.shared.run {
            let result = resolve(host, port)
            queue.async { target.session?.hostLookedUp(result) }
        }
    }

    /// On the queue: the lookup started by `beginAttempt` answered. Used by the attempt that
    /// waits for it, if any; dropped when the session is closed or no attempt waits (the one
    /// it was for failed and the next has not started: that one will look up anew).
    private func hostLookedUp(_ result: Result<String, ResolveError>) {
        hostLookupRunning = false
        guard !closed else { return }
        guard let attempt, attempt.resolving, attempt.result == nil else {
            Log.debug("iscsi: the lookup of \(url.host) answered after its attempt ended; dropped")
            return
        }
        attempt.resolving = false
        switch result {
        case .failure(let error):
            attempt.result = .failed("cannot resolve \(url.host): \(error.reason)")
            handleRecoveryEvents()
        case .success(let address) where !HostLookup.isNumericAddress(address):
            // libiscsi would look it up itself, on the queue.
            attempt.result = .failed("cannot resolve \(url.host): the resolver answered '\(address)', not an address")
            handleRecoveryEvents()
        case .success(let address):
            Log.debug("iscsi: \(url.host) is \(address) (attempt \(attempt.number) to \(url))")
            attempt.deadline = Self.monotonicNow() + recovery.loginTimeout
            connectAttempt(attempt, portal: ISCSIURL.portal(host: address, port: url.port))
        }
    }
}
