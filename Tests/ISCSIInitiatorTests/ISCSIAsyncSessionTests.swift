import Dispatch
import Foundation
import XCTest
import SCSICore
@testable import ISCSIInitiator

/// Sessions that never block their queue on the target: `loggingInInBackground` (the first
/// login goes through the reconnect machinery) and `close()` (the logout runs in the
/// background). Uses ISCSIOutageTests' daemon, sink and helpers (same setUp and tearDown).
extension ISCSIOutageTests {
    private static let initiatorName = "iqn.2024-01.test.iscsiinitiator:async"

    private func connectInBackground(_ policy: ISCSIRecoveryPolicy, url: String? = nil,
                                     settings: ISCSILoginSettings? = nil) throws -> ISCSISession {
        let session = try ISCSISession.loggingInInBackground(
            url: try ISCSIURL(parsing: url ?? daemon.url),
            login: settings ?? ISCSILoginSettings(initiatorName: Self.initiatorName),
            queue: queue, maxOutstanding: 64, recovery: policy)
        queue.sync { session.completionSink = sink }
        sessions.append(session)
        return session
    }

    /// Seconds `body` took.
    private func timed(_ body: () throws -> Void) rethrows -> Double {
        let start = Date()
        try body()
        return Date().timeIntervalSince(start)
    }

    // MARK: - First login in the background

    func testBackgroundLoginWithTheTargetDownReturnsAtOnceAndServesWhenItIsBack() throws {
        daemon.kill()
        var session: ISCSISession!
        let made = try timed {
            session = try connectInBackground(ISCSIRecoveryPolicy(outageTimeout: 30, keepaliveInterval: 1,
                                                                  maxReconnectDelay: 0.5))
        }
        XCTAssertLessThan(made, 0.1, "made without waiting for the target")
        XCTAssertFalse(session.connectionStatus.loggedIn)

        let b = makeBuffers(4096)
        XCTAssertTrue(submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0))
        Thread.sleep(forTimeInterval: 1.5)   // a few failed attempts (connection refused)
        XCTAssertEqual(session.connectionStatus.heldCommands, 1, "held while the target is down")
        XCTAssertTrue(sink.all.isEmpty, "nothing completed before the login")
        let (link, counters) = queue.sync { (session.link, (session as SCSITargetSession).sessionCounters) }
        XCTAssertEqual(link, .reconnecting)
        XCTAssertGreaterThanOrEqual(counters.loginFailures, 2, "failed attempts are counted (metrics)")

        try daemon.launch()
        let back = Date()
        let (done, _) = completeRetryingUnitAttention(session, token: 0, timeout: 15) {
            submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0)
        }
        XCTAssertEqual(done?.outcome, .completed)
        XCTAssertEqual(done?.status, .good)
        print("background login: made in \(String(format: "%.3f", made)) s, held read done "
              + "\(String(format: "%.2f", Date().timeIntervalSince(back))) s after tgtd was back")
        let status = session.connectionStatus
        XCTAssertTrue(status.loggedIn)
        XCTAssertEqual(status.reconnects, 0, "a first login is not a reconnect")
        XCTAssertEqual(status.outages, 0, "nor an outage")
    }

    /// A frozen target accepts the TCP connection (the kernel does) but never answers the
    /// login: a synchronous login would hold the queue for its whole timeout.
    func testBackgroundLoginToAFrozenTargetLeavesTheQueueFree() throws {
        daemon.pause()
        var session: ISCSISession!
        let made = try timed {
            session = try connectInBackground(ISCSIRecoveryPolicy(outageTimeout: 30, maxReconnectDelay: 0.5,
                                                                  loginTimeout: 1))
        }
        XCTAssertLessThan(made, 0.1)
        let b = makeBuffers(4096)
        XCTAssertTrue(submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0))
        var slowest = 0.0
        for _ in 0..<30 {   // 1.5 s: more than one attempt's login timeout
            slowest = max(slowest, timed { queue.sync {} })
            usleep(50_000)
        }
        XCTAssertLessThan(slowest, 0.05, "the queue answered at once while the login waited")
        XCTAssertFalse(session.connectionStatus.loggedIn)
        daemon.resume()
        let (done, _) = completeRetryingUnitAttention(session, token: 0, timeout: 15) {
            submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0)
        }
        XCTAssertEqual(done?.status, .good)
    }

    func testBackgroundLoginFailsHeldCommandsAtTheOutageTimeoutAndRecovers() throws {
        daemon.kill()
        let timeout = 1.5
        let session = try connectInBackground(ISCSIRecoveryPolicy(outageTimeout: timeout, keepaliveInterval: 1,
                                                                  maxReconnectDelay: 0.5))
        let made = Date()
        let b = makeBuffers(4096)
        XCTAssertTrue(submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0))
        let failed = sink.completion(of: 0, timeout: timeout + 5)
        let failedAfter = Date().timeIntervalSince(made)
        XCTAssertEqual(failed?.outcome, .transportFailure)
        XCTAssertGreaterThanOrEqual(failedAfter, timeout - 0.3, "held until the outage timeout")
        XCTAssertLessThan(failedAfter, timeout + 1.5, "failed when the outage timeout passed")
        XCTAssertTrue(session.connectionStatus.failingCommands)

        // New commands fail at once.
        let fastFail = timed { submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 1) }
        XCTAssertEqual(sink.completion(of: 1, timeout: 2)?.outcome, .transportFailure)
        XCTAssertLessThan(fastFail, 0.5)

        // The target comes up: the session logs in and serves commands.
        try daemon.launch()
        waitUntil("the first login", timeout: 10) { session.connectionStatus.loggedIn }
        XCTAssertFalse(session.connectionStatus.failingCommands)
        XCTAssertTrue(submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 2))
        let (done, _) = completeRetryingUnitAttention(session, token: 2, timeout: 10) {
            submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 2)
        }
        XCTAssertEqual(done?.status, .good)
        print("background login, target never back: held read failed after \(String(format: "%.2f", failedAfter)) s "
              + "(outage timeout \(timeout) s)")
    }

    func testBackgroundLoginWithTheTargetUpServesTheFirstCommand() throws {
        let session = try connectInBackground(.default)
        let b = makeBuffers(4096)
        // Submitted before the login has had a chance to finish: held, then sent.
        XCTAssertTrue(submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0))
        let (done, unitAttentions) = completeRetryingUnitAttention(session, token: 0, timeout: 10) {
            submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0)
        }
        XCTAssertEqual(done?.status, .good)
        // The new I_T nexus's POWER ON OCCURRED is the login's to clear, as the synchronous
        // login does: a guest must not see a reset because a queue logged in (after a server
        // restart or a migration, Scripts/reconnect-test.sh counts them).
        XCTAssertEqual(unitAttentions, 0, "the first command met no unit attention")
        XCTAssertEqual(try daemon.sessionIDs().count, 1)
    }

    func testBackgroundLoginThrowsSettingsErrorsAtOnce() throws {
        let url = "iscsi://someone@127.0.0.1:\(daemon.portalPort)/\(daemon.iqn)/1"
        XCTAssertThrowsError(try connectInBackground(.default, url: url)) { error in
            XCTAssertEqual((error as? ISCSIError)?.kind, .configuration, "\(error)")
        }
        XCTAssertThrowsError(try connectInBackground(.default, settings: ISCSILoginSettings(initiatorName: ""))) { error in
            XCTAssertNotNil(error as? ISCSIError, "\(error)")
        }
    }

    /// A refused login is retried, and said once (not once per attempt), naming the cause.
    func testBackgroundLoginRefusedByTheTargetIsLoggedOnceWithItsCause() throws {
        try daemon.requireCHAP(user: "vususer", password: "vussecret123")
        var session: ISCSISession!
        let log = try capturingStandardError {
            session = try connectInBackground(ISCSIRecoveryPolicy(outageTimeout: 30, maxReconnectDelay: 0.5))
            Thread.sleep(forTimeInterval: 2)   // attempts at 0, 0.25, 0.75, 1.25, 1.75 s
        }
        let failures = log.split(separator: "\n").filter { $0.contains("login to") && $0.contains("failed") }
        print("refused background login logs: \(failures)")
        XCTAssertEqual(failures.count, 1, "one line for one reason: \(log)")
        XCTAssertTrue(failures.first?.contains("CHAP") == true, "names the cause: \(failures)")
        XCTAssertTrue(failures.first?.contains("retrying") == true, "\(failures)")
        XCTAssertFalse(session.connectionStatus.loggedIn)
    }

    func testClosingABackgroundSessionBeforeItsLoginAbortsHeldCommands() throws {
        daemon.kill()
        let session = try connectInBackground(ISCSIRecoveryPolicy(outageTimeout: 30, maxReconnectDelay: 0.5))
        let b = makeBuffers(4096)
        XCTAssertTrue(submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0))
        Thread.sleep(forTimeInterval: 0.5)
        let closing = timed { queue.sync { session.close() } }
        XCTAssertLessThan(closing, 0.1)
        XCTAssertEqual(sink.completion(of: 0, timeout: 1)?.outcome, .aborted)
        // Attempts scheduled before the close do not run after it.
        try daemon.launch()
        Thread.sleep(forTimeInterval: 1.5)
        XCTAssertEqual(try daemon.sessionIDs(), [], "no login after the close")
        XCTAssertEqual(sink.all.count, 1)
    }

    // MARK: - Close does not wait for the target

    func testCloseDoesNotWaitForAFrozenTarget() throws {
        let session = try connect(ISCSIRecoveryPolicy(outageTimeout: 30, keepaliveInterval: 0, commandTimeout: 0))
        let b = makeBuffers(4096)
        submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0)
        XCTAssertEqual(sink.completion(of: 0)?.status, .good)

        daemon.pause()
        // A read the frozen target never answers: close completes it towards the caller.
        XCTAssertTrue(submit(session, TestCDB.read16(lba: 8, blocks: 8), b, .fromDevice, token: 1))
        let closing = timed { queue.sync { session.close() } }
        XCTAssertLessThan(closing, 0.1, "close returns without the target's logout response")
        XCTAssertEqual(sink.completion(of: 1, timeout: 1)?.outcome, .aborted)

        // The queue stays free while the logout waits in the background.
        var slowest = 0.0
        for _ in 0..<20 {
            slowest = max(slowest, timed { queue.sync {} })
            usleep(50_000)
        }
        XCTAssertLessThan(slowest, 0.05, "the queue answered at once during the logout")

        // The background logout gives up after its timeout (5 s) and drops the connection.
        let waited = timed { XCTAssertTrue(ISCSISession.waitForBackgroundLogouts(timeout: 10)) }
        print("close with a frozen target: returned in \(String(format: "%.4f", closing)) s, queue latency at most "
              + "\(String(format: "%.4f", slowest)) s, background logout gave up \(String(format: "%.2f", waited)) s after that")
        XCTAssertGreaterThan(waited, 2, "the logout was given time")
    }

    func testCloseWithALiveTargetStillLogsOut() throws {
        let relay = try TCPRelay(targetPort: daemon.portalPort)
        defer { relay.stop() }
        let session = try connect(.default, url: "iscsi://127.0.0.1:\(relay.port)/\(daemon.iqn)/1")
        let b = makeBuffers(4096)
        submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0)
        XCTAssertNotNil(sink.completion(of: 0))
        XCTAssertEqual(try daemon.sessionIDs().count, 1)

        let closing = timed { queue.sync { session.close() } }
        XCTAssertLessThan(closing, 0.1)
        XCTAssertTrue(ISCSISession.waitForBackgroundLogouts(timeout: 5))
        waitUntil("tgtd to end the session", timeout: 5) { (try? daemon.sessionIDs().isEmpty) == true }
        // On the wire: a Logout Request (0x06) answered by a Logout Response (0x26).
        waitUntil("the relay to record the logout response", timeout: 3) {
            ISCSIStreamReport(relay.connections.first?.toInitiator ?? [], headerDigest: false)
                .fullFeatureOpcodes.contains(0x26)
        }
        let recording = try XCTUnwrap(relay.connections.first)
        XCTAssertEqual(ISCSIStreamReport(recording.toTarget, headerDigest: false).fullFeatureOpcodes.last, 0x06,
                       "the last PDU sent is the logout request")
    }
}
