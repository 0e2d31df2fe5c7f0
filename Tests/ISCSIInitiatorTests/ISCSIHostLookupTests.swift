import Dispatch
import Foundation
import Synchronization
import XCTest
import SCSICore
@testable import ISCSIInitiator

/// A resolver for `ISCSISession.resolveHost` that answers what the test says (or what
/// getaddrinfo says), after a delay, and counts its lookups. Its script can change while
/// sessions use it.
final class ScriptedResolver: Sendable {
    struct Script {
        var delay: Double = 0
        /// nil: getaddrinfo's answer.
        var answer: Result<String, ResolveError>? = .success("127.0.0.1")
    }

    private struct State {
        var script = Script()
        var hosts: [String] = []
        var running = 0
    }
    private let state = Mutex(State())

    init(delay: Double = 0, answer: Result<String, ResolveError>? = .success("127.0.0.1")) {
        state.withLock { $0.script = Script(delay: delay, answer: answer) }
    }

    func change(_ edit: (inout Script) -> Void) { state.withLock { edit(&$0.script) } }
    /// The hosts looked up so far (started lookups).
    var hosts: [String] { state.withLock { $0.hosts } }
    /// Lookups under way right now.
    var running: Int { state.withLock { $0.running } }

    func resolve(_ host: String, _ port: UInt16) -> Result<String, ResolveError> {
        let script = state.withLock { state -> Script in
            state.hosts.append(host)
            state.running += 1
            return state.script
        }
        if script.delay > 0 { Thread.sleep(forTimeInterval: script.delay) }
        state.withLock { $0.running -= 1 }
        return script.answer ?? HostLookup.getaddrinfo(host: host, port: port)
    }
}

/// Host names in the URLs of sessions that log in in the background: looked up off the
/// session's queue for every attempt (ISCSISession+HostLookup.swift). Uses ISCSIOutageTests'
/// daemon, sink and helpers (same setUp and tearDown).
extension ISCSIOutageTests {
    private static let lookupInitiatorName = "iqn.2024-01.test.iscsiinitiator:lookup"

    /// `url` with the test target's port and IQN at `host`.
    private func url(host: String) -> String { "iscsi://\(host):\(daemon.portalPort)/\(daemon.iqn)/1" }

    /// A background session to `host`; `keep: false` leaves its lifetime to the test.
    private func lookingUp(_ host: String, _ policy: ISCSIRecoveryPolicy, keep: Bool = true) throws -> ISCSISession {
        let session = try ISCSISession.loggingInInBackground(
            url: try ISCSIURL(parsing: url(host: host)), login: ISCSILoginSettings(initiatorName: Self.lookupInitiatorName),
            queue: queue, maxOutstanding: 64, recovery: policy)
        queue.sync { session.completionSink = sink }
        if keep { sessions.append(session) }
        return session
    }

    /// Uses `resolver` for the rest of the test.
    private func install(_ resolver: ScriptedResolver) {
        let original = ISCSISession.resolveHost
        ISCSISession.resolveHost = { resolver.resolve($0, $1) }
        addTeardownBlock { ISCSISession.resolveHost = original }
    }

    /// The slowest of `queue.sync {}` sampled every 100 ms for `seconds`, and how many samples
    /// were taken while `resolver` had a lookup under way.
    private func queueLatency(for seconds: Double, during resolver: ScriptedResolver) -> (slowest: Double, duringLookup: Int) {
        var slowest = 0.0
        var duringLookup = 0
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            let looking = resolver.running > 0
            let start = Date()
            queue.sync {}
            slowest = max(slowest, Date().timeIntervalSince(start))
            if looking && resolver.running > 0 { duringLookup += 1 }
            usleep(100_000)
        }
        return (slowest, duringLookup)
    }

    /// Reads 8 blocks with `token` and waits for GOOD (retrying a unit attention).
    private func assertReads(_ session: ISCSISession, token: Int, timeout: Double, file: StaticString = #filePath,
                             line: UInt = #line) {
        let b = makeBuffers(4096)
        let before = sink.all.filter { $0.token == token }.count
        XCTAssertTrue(submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: token), file: file, line: line)
        let (done, _) = completeRetryingUnitAttention(session, token: token, before: before, timeout: timeout) {
            submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: token)
        }
        XCTAssertEqual(done?.outcome, .completed, file: file, line: line)
        XCTAssertEqual(done?.status, .good, file: file, line: line)
    }

    // MARK: - Unit level

    func testNumericAddressesNeedNoLookup() {
        for address in ["127.0.0.1", "10.1.2.3", "::1", "fe80::1", "2001:db8::5"] {
            XCTAssertTrue(HostLookup.isNumericAddress(address), address)
        }
        for name in ["localhost", "storage.example", "10.1.2", "1.2.3.4.5", "", "[::1]"] {
            XCTAssertFalse(HostLookup.isNumericAddress(name), name)
        }
        XCTAssertEqual(ISCSIURL.portal(host: "10.1.2.3", port: 3260), "10.1.2.3:3260")
        XCTAssertEqual(ISCSIURL.portal(host: "2001:db8::5", port: 3261), "[2001:db8::5]:3261")
    }

    func testGetaddrinfoAnswersNumericallyForLocalhost() throws {
        let address = try HostLookup.getaddrinfo(host: "localhost", port: 3260).get()
        XCTAssertTrue(["127.0.0.1", "::1"].contains(address), address)
        XCTAssertEqual(try HostLookup.getaddrinfo(host: "127.0.0.1", port: 3260).get(), "127.0.0.1")
    }

    // MARK: - Through the real resolver

    /// The real getaddrinfo (localhost from /etc/hosts) for the first login and for the
    /// reconnect after a restart of the target.
    func testSessionToAHostNameLogsInAndReconnectsThroughTheLookup() throws {
        guard case .success("127.0.0.1") = HostLookup.getaddrinfo(host: "localhost", port: 3260) else {
            throw XCTSkip("localhost does not resolve to 127.0.0.1 first here (tgtd listens on 127.0.0.1 only)")
        }
        let resolver = ScriptedResolver(answer: nil)   // getaddrinfo, counted
        install(resolver)

        let session = try lookingUp("localhost", ISCSIRecoveryPolicy(outageTimeout: 30, keepaliveInterval: 1,
                                                                     maxReconnectDelay: 0.5))
        assertReads(session, token: 0, timeout: 10)
        XCTAssertTrue(session.connectionStatus.loggedIn)
        XCTAssertEqual(resolver.hosts, ["localhost"], "the first login looked the name up")

        daemon.kill()
        try daemon.launch()
        waitUntil("the reconnect", timeout: 15) { session.connectionStatus.reconnects == 1 }
        assertReads(session, token: 1, timeout: 10)
        let names = resolver.hosts
        XCTAssertGreaterThanOrEqual(names.count, 2, "every attempt looks the name up anew")
        XCTAssertTrue(names.allSatisfy { $0 == "localhost" }, "\(names)")
        print("host name session: \(names.count) lookups of localhost for 1 login and 1 reconnect")
    }

    // MARK: - A slow resolver

    /// A lookup that takes 3 s, for the first login and for a reconnect: the queue answers at
    /// once meanwhile, and the session logs in when the lookup answers. (With the name handed
    /// to libiscsi, its getaddrinfo would hold the queue for those 3 s.)
    func testASlowLookupLeavesTheQueueFree() throws {
        let resolver = ScriptedResolver(delay: 3)
        install(resolver)
        let made = Date()
        let session = try lookingUp("storage.example", ISCSIRecoveryPolicy(outageTimeout: 30, keepaliveInterval: 1,
                                                                           maxReconnectDelay: 0.5, loginTimeout: 5))
        XCTAssertLessThan(Date().timeIntervalSince(made), 0.1, "made without waiting for the lookup")
        let first = queueLatency(for: 2.5, during: resolver)
        XCTAssertLessThan(first.slowest, 0.05, "the queue answered at once during the first login's lookup")
        XCTAssertGreaterThanOrEqual(first.duringLookup, 15, "the samples were taken while the lookup ran")
        XCTAssertFalse(session.connectionStatus.loggedIn, "no login before the lookup answered")
        assertReads(session, token: 0, timeout: 10)
        XCTAssertEqual(resolver.hosts, ["storage.example"])

        // A reconnect looks the name up again, as slowly.
        daemon.kill()
        waitUntil("the reconnect's lookup", timeout: 5) { resolver.running > 0 }
        let reconnect = queueLatency(for: 2, during: resolver)
        XCTAssertLessThan(reconnect.slowest, 0.05, "the queue answered at once during the reconnect's lookup")
        XCTAssertGreaterThanOrEqual(reconnect.duringLookup, 12)
        try daemon.launch()
        waitUntil("the reconnect", timeout: 15) { session.connectionStatus.reconnects == 1 }
        assertReads(session, token: 1, timeout: 10)
        print("slow lookup: queue latency at most \(String(format: "%.4f", first.slowest)) s (first login), "
              + "\(String(format: "%.4f", reconnect.slowest)) s (reconnect); \(resolver.hosts.count) lookups")
    }

    /// A lookup slower than the attempt's deadline fails the attempt as a timeout; the next
    /// attempt waits for that same lookup rather than starting another.
    func testALookupPastTheAttemptDeadlineFailsTheAttemptAsATimeout() throws {
        let resolver = ScriptedResolver(delay: 2.5)
        install(resolver)
        var session: ISCSISession!
        let log = try capturingStandardError {
            session = try lookingUp("storage.example", ISCSIRecoveryPolicy(outageTimeout: 30, maxReconnectDelay: 0.5,
                                                                           loginTimeout: 1))
            Thread.sleep(forTimeInterval: 2.2)
        }
        let failures = log.split(separator: "\n").filter { $0.contains("login to") && $0.contains("failed") }
        XCTAssertTrue(failures.contains { $0.contains("cannot resolve storage.example within 1 s") }, log)
        XCTAssertEqual(resolver.hosts.count, 1, "one lookup under way at a time")
        XCTAssertGreaterThanOrEqual(queue.sync { session.sessionCounters.loginFailures }, 1)
        resolver.change { $0.delay = 0 }
        assertReads(session, token: 0, timeout: 10)
    }

    // MARK: - A failing resolver

    func testAFailedLookupIsReportedAndRetriedUntilTheNameResolves() throws {
        let resolver = ScriptedResolver(answer: .failure(ResolveError("Name or service not known")))
        install(resolver)
        var session: ISCSISession!
        let log = try capturingStandardError {
            session = try lookingUp("storage.example", ISCSIRecoveryPolicy(outageTimeout: 30, maxReconnectDelay: 0.5))
            Thread.sleep(forTimeInterval: 2)   // attempts at 0, 0.25, 0.75, 1.25, 1.75 s
        }
        let failures = log.split(separator: "\n").filter { $0.contains("login to") && $0.contains("failed") }
        print("failed lookup logs: \(failures)")
        XCTAssertEqual(failures.count, 1, "one line for one reason: \(log)")
        XCTAssertTrue(failures.first?.contains("cannot resolve storage.example: Name or service not known") == true,
                      "\(failures)")
        let tries = resolver.hosts.count
        XCTAssertGreaterThanOrEqual(tries, 3, "retried")
        XCTAssertLessThanOrEqual(tries, 6, "with backoff")
        XCTAssertGreaterThanOrEqual(queue.sync { session.sessionCounters.loginFailures }, 3)
        XCTAssertFalse(session.connectionStatus.loggedIn)

        resolver.change { $0.answer = .success("127.0.0.1") }
        assertReads(session, token: 0, timeout: 10)
        XCTAssertEqual(session.connectionStatus.reconnects, 0)
    }

    func testAResolverAnsweringANameIsAFailedAttemptNotABlockingConnect() throws {
        let resolver = ScriptedResolver(answer: .success("still.a.name"))
        install(resolver)
        var session: ISCSISession!
        let log = try capturingStandardError {
            session = try lookingUp("storage.example", ISCSIRecoveryPolicy(outageTimeout: 30, maxReconnectDelay: 0.5))
            Thread.sleep(forTimeInterval: 0.5)
        }
        XCTAssertTrue(log.contains("the resolver answered 'still.a.name', not an address"), log)
        resolver.change { $0.answer = .success("127.0.0.1") }
        assertReads(session, token: 0, timeout: 10)
    }

    // MARK: - Closing during a lookup

    /// close() while the lookup runs returns at once; the lookup's answer is dropped, for a
    /// closed session and for one already freed.
    func testCloseDuringASlowLookupReturnsAtOnceAndNothingLogsIn() throws {
        let resolver = ScriptedResolver(delay: 1.5)
        install(resolver)
        let kept = try lookingUp("storage.example", ISCSIRecoveryPolicy(outageTimeout: 30, maxReconnectDelay: 0.5))
        var freed: ISCSISession? = try lookingUp("storage.example", ISCSIRecoveryPolicy(outageTimeout: 30,
                                                                                        maxReconnectDelay: 0.5),
                                                 keep: false)
        let b = makeBuffers(4096)
        XCTAssertTrue(submit(kept, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0))
        waitUntil("both lookups", timeout: 2) { resolver.running == 2 }

        let start = Date()
        queue.sync {
            kept.close()
            freed!.close()
        }
        let closing = Date().timeIntervalSince(start)
        freed = nil
        XCTAssertLessThan(closing, 0.1, "close does not wait for the lookup")
        XCTAssertEqual(sink.completion(of: 0, timeout: 1)?.outcome, .aborted)

        waitUntil("the lookups to answer", timeout: 5) { resolver.running == 0 }
        Thread.sleep(forTimeInterval: 1)   // past any attempt the answers could have started
        queue.sync {}
        XCTAssertEqual(try daemon.sessionIDs(), [], "no login after the close")
        XCTAssertEqual(resolver.hosts.count, 2, "no attempt after the close")
        XCTAssertEqual(sink.all.count, 1)
        XCTAssertFalse(kept.connectionStatus.loggedIn)
    }
}
