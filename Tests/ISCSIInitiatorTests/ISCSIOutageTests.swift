import Dispatch
import Foundation
import XCTest
import SCSICore
@testable import ISCSIInitiator
import ServerLog

/// Target outages against a tgtd of each test's own: restarted, killed for longer than the
/// outage timeout, stopped (SIGSTOP) without closing its connections. Every wait is bounded.
/// Sessions that log in in the background and closes that do not wait: ISCSIAsyncSessionTests.swift.
final class ISCSIOutageTests: XCTestCase, SessionDrivingTestCase {
    var daemon: TargetDaemon!
    var queue: DispatchQueue!
    var sink: RecordingSink!
    var sessions: [ISCSISession] = []
    var buffers: [IOBuffers] = []

    override func setUpWithError() throws {
        queue = DispatchQueue(label: "iscsi-outage-test")
        sink = RecordingSink()
        daemon = try TargetDaemon(instance: 1)
        if ProcessInfo.processInfo.environment["VUS_TEST_DEBUG"] != nil { Log.level = .debug }
    }

    override func tearDown() {
        for session in sessions { queue.sync { session.close() } }
        sessions = []
        daemon?.stop()
        daemon = nil
        buffers.forEach { $0.free() }
        buffers = []
    }

    func connect(_ policy: ISCSIRecoveryPolicy, url: String? = nil) throws -> ISCSISession {
        let session = try ISCSISession(url: try ISCSIURL(parsing: url ?? daemon.url),
                                       initiatorName: "iqn.2024-01.test.iscsiinitiator:outage",
                                       queue: queue, maxOutstanding: 64, recovery: policy)
        queue.sync { session.completionSink = sink }
        sessions.append(session)
        return session
    }

    private func taskManagement(_ session: ISCSISession, _ function: SCSITaskManagementFunction) -> ReplyBox {
        let box = ReplyBox()
        queue.sync { session.taskManagement(function, lun: 1) { box.set($0) } }
        return box
    }

    /// Polls `condition` every 50 ms for at most `timeout` seconds; returns the seconds it took.
    @discardableResult
    func waitUntil(_ what: String, timeout: Double, file: StaticString = #filePath, line: UInt = #line,
                           _ condition: () -> Bool) -> Double? {
        let start = Date()
        while !condition() {
            if Date().timeIntervalSince(start) > timeout {
                XCTFail("timed out after \(timeout) s waiting for \(what)", file: file, line: line)
                return nil
            }
            usleep(50_000)
        }
        return Date().timeIntervalSince(start)
    }

    static func isUnitAttention(_ c: RecordedCompletion) -> Bool {
        c.outcome == .completed && c.status == .checkCondition && c.sense.count > 2 && c.sense[2] & 0x0F == 6
    }

    /// Waits for a completion of `token` beyond the `before` ones it already had; a UNIT
    /// ATTENTION is retried as a SCSI initiator would. Returns the final completion and how
    /// many unit attentions were seen.
    func completeRetryingUnitAttention(_ session: ISCSISession, token: Int, before: Int = 0, timeout: Double,
                                               resubmit: () -> Void) -> (RecordedCompletion?, Int) {
        var unitAttentions = 0
        var seen = before
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let mine = sink.all.filter { $0.token == token }
            if mine.count > seen {
                let done = mine[mine.count - 1]
                seen = mine.count
                if Self.isUnitAttention(done) && unitAttentions < 3 {
                    unitAttentions += 1
                    resubmit()
                    continue
                }
                return (done, unitAttentions)
            }
            usleep(20_000)
        }
        XCTFail("token \(token) did not complete within \(timeout) s")
        return (nil, unitAttentions)
    }

    private func fill(_ buffers: IOBuffers, seed: Int) {
        for i in 0..<buffers.count { buffers.data[i] = UInt8(truncatingIfNeeded: i &* 31 &+ seed &* 7 &+ i >> 11) }
    }

    // MARK: - Restart within the outage timeout

    func testCommandsInFlightSurviveATargetRestart() throws {
        let session = try connect(ISCSIRecoveryPolicy(outageTimeout: 30, keepaliveInterval: 1, maxReconnectDelay: 0.5))
        let count = 16
        let blocks: UInt32 = 128   // 64 KiB each
        let bytes = Int(blocks) * TargetDaemon.blockSize
        let old = (0..<count).map { _ in makeBuffers(bytes) }
        for (token, b) in old.enumerated() {
            fill(b, seed: 1000 + token)
            submit(session, TestCDB.write16(lba: UInt64(token) * UInt64(blocks), blocks: blocks), b, .toDevice, token: token)
        }
        XCTAssertTrue(sink.wait(for: count).allSatisfy { $0.outcome == .completed && $0.status == .good })

        // Freeze the target so the new writes stay in flight, then kill it: its connections reset.
        let new = (0..<count).map { _ in makeBuffers(bytes) }
        daemon.pause()
        for (token, b) in new.enumerated() {
            fill(b, seed: token)
            XCTAssertTrue(submit(session, TestCDB.write16(lba: UInt64(token) * UInt64(blocks), blocks: blocks), b,
                                 .toDevice, token: token))
        }
        usleep(300_000)
        daemon.kill()
        let killed = Date()
        waitUntil("the session to notice the reset", timeout: 5) { !session.connectionStatus.loggedIn }
        XCTAssertEqual(session.connectionStatus.heldCommands, count, "every write is held for the reconnect")
        XCTAssertEqual(sink.all.count, count, "nothing completed towards the caller during the outage")

        Thread.sleep(forTimeInterval: 2)
        try daemon.launch()
        let relaunched = Date()
        var unitAttentions = 0
        for (token, b) in new.enumerated() {
            let (done, ua) = completeRetryingUnitAttention(session, token: token, before: 1, timeout: 20) {
                submit(session, TestCDB.write16(lba: UInt64(token) * UInt64(blocks), blocks: blocks), b,
                       .toDevice, token: token)
            }
            unitAttentions += ua
            XCTAssertEqual(done?.outcome, .completed, "token \(token)")
            XCTAssertEqual(done?.status, .good, "token \(token): sense \(done?.sense ?? [])")
        }
        let status = session.connectionStatus
        print("restart: outage \(String(format: "%.2f", Date().timeIntervalSince(killed))) s after the kill, "
              + "commands done \(String(format: "%.2f", Date().timeIntervalSince(relaunched))) s after tgtd was back; "
              + "session outage \(status.lastOutageSeconds.map { String(format: "%.2f", $0) } ?? "-") s, "
              + "\(unitAttentions) unit attention(s) retried")
        XCTAssertTrue(status.loggedIn)
        XCTAssertEqual(status.reconnects, 1)
        XCTAssertLessThanOrEqual(unitAttentions, 1, "the new nexus reports one POWER ON/RESET unit attention")

        // The data written across the restart is what the disk holds.
        let before = sink.all.count
        let back = (0..<count).map { _ in makeBuffers(bytes) }
        for (i, b) in back.enumerated() {
            submit(session, TestCDB.read16(lba: UInt64(i) * UInt64(blocks), blocks: blocks), b, .fromDevice, token: 32 + i)
        }
        XCTAssertTrue(sink.wait(for: before + count).suffix(count).allSatisfy { $0.status == .good })
        for i in 0..<count {
            XCTAssertTrue(memcmp(new[i].data.baseAddress!, back[i].data.baseAddress!, bytes) == 0, "block \(i) differs")
        }
    }

    // MARK: - Longer than the outage timeout

    func testOutageLongerThanTheTimeoutFailsCommandsAndRecovers() throws {
        let timeout = 2.0
        let session = try connect(ISCSIRecoveryPolicy(outageTimeout: timeout, keepaliveInterval: 1, maxReconnectDelay: 0.5))
        let b = makeBuffers(4096)
        submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0)
        XCTAssertEqual(sink.completion(of: 0)?.status, .good)

        daemon.kill()
        let killed = Date()
        waitUntil("the session to notice the kill", timeout: 5) { !session.connectionStatus.loggedIn }
        let reads = (1...4).map { _ in makeBuffers(4096) }
        for (i, r) in reads.enumerated() {
            XCTAssertTrue(submit(session, TestCDB.read16(lba: UInt64(i) * 8, blocks: 8), r, .fromDevice, token: 1 + i))
        }
        let failed = sink.wait(for: 5, timeout: timeout + 5)
        let failedAfter = Date().timeIntervalSince(killed)
        XCTAssertTrue(failed.dropFirst().allSatisfy { $0.outcome == .transportFailure }, "\(failed.map(\.outcome))")
        XCTAssertGreaterThanOrEqual(failedAfter, timeout - 0.5, "held until the outage timeout")
        XCTAssertLessThan(failedAfter, timeout + 2.5)
        XCTAssertTrue(session.connectionStatus.failingCommands)

        // New commands fail at once.
        let t = Date()
        submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 10)
        XCTAssertEqual(sink.completion(of: 10, timeout: 2)?.outcome, .transportFailure)
        let fastFail = Date().timeIntervalSince(t)
        XCTAssertLessThan(fastFail, 0.5)

        // The target comes back: commands are served again.
        Thread.sleep(forTimeInterval: 1)
        try daemon.launch()
        let back = Date()
        var good = false
        var token = 20
        while !good && Date().timeIntervalSince(back) < 15 {
            submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: token)
            if let done = sink.completion(of: token, timeout: 5) {
                good = done.outcome == .completed && done.status == .good
            }
            if !good { usleep(100_000) }
            token += 1
        }
        let recovered = Date().timeIntervalSince(back)
        XCTAssertTrue(good, "no good read within 15 s of tgtd coming back")
        print("long outage: held commands failed \(String(format: "%.2f", failedAfter)) s after the kill "
              + "(outage timeout \(timeout) s), new command failed in \(String(format: "%.3f", fastFail)) s, "
              + "served again \(String(format: "%.2f", recovered)) s after tgtd was back")
        XCTAssertFalse(session.connectionStatus.failingCommands)
        XCTAssertEqual(session.connectionStatus.reconnects, 1)
        // The same through the protocol, as the metrics read it.
        let counters = session.queue.sync { (session as SCSITargetSession).sessionCounters }
        XCTAssertEqual(counters.reconnects, 1)
        XCTAssertEqual(counters.connectionLosses, 1)
        XCTAssertGreaterThanOrEqual(counters.commandFailures, 5, "four held reads and the one failed at once")
    }

    // MARK: - A target that stops answering but keeps its connections

    func testKeepaliveDetectsATargetThatStopsAnswering() throws {
        let session = try connect(ISCSIRecoveryPolicy(outageTimeout: 30, keepaliveInterval: 1, keepaliveMaxMissed: 2,
                                                      commandTimeout: 0, maxReconnectDelay: 0.5, loginTimeout: 1))
        Thread.sleep(forTimeInterval: 1.5)   // a NOP exchange or two while the target answers
        XCTAssertTrue(session.connectionStatus.loggedIn, "answered NOP-Outs keep the connection")
        daemon.pause()
        let stopped = Date()
        let detected = waitUntil("keep-alive to declare the target dead", timeout: 8) { !session.connectionStatus.loggedIn }
        let b = makeBuffers(4096)
        XCTAssertTrue(submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0))
        Thread.sleep(forTimeInterval: 1)
        XCTAssertEqual(session.connectionStatus.heldCommands, 1)
        daemon.resume()
        let resumed = Date()
        let (done, _) = completeRetryingUnitAttention(session, token: 0, timeout: 15) {
            submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0)
        }
        XCTAssertEqual(done?.outcome, .completed)
        XCTAssertEqual(done?.status, .good)
        print("keep-alive: SIGSTOP detected after \(String(format: "%.2f", detected ?? -1)) s (1 s interval, 2 missed), "
              + "read done \(String(format: "%.2f", Date().timeIntervalSince(resumed))) s after SIGCONT, "
              + "\(String(format: "%.2f", Date().timeIntervalSince(stopped))) s after SIGSTOP")
        XCTAssertGreaterThanOrEqual(session.connectionStatus.reconnects, 1)
    }

    func testCommandSilenceDetectsAStoppedTargetWithoutKeepalive() throws {
        let session = try connect(ISCSIRecoveryPolicy(outageTimeout: 30, keepaliveInterval: 0, commandTimeout: 2,
                                                      maxReconnectDelay: 0.5, loginTimeout: 1))
        // Silence alone (no command waiting) is not a reason to disconnect.
        Thread.sleep(forTimeInterval: 3.5)
        XCTAssertTrue(session.connectionStatus.loggedIn)
        daemon.pause()
        let b = makeBuffers(4096)
        XCTAssertTrue(submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0))
        let detected = waitUntil("the command timeout to declare the target dead", timeout: 8) {
            !session.connectionStatus.loggedIn
        }
        daemon.resume()
        let (done, _) = completeRetryingUnitAttention(session, token: 0, timeout: 15) {
            submit(session, TestCDB.read16(lba: 0, blocks: 8), b, .fromDevice, token: 0)
        }
        XCTAssertEqual(done?.status, .good)
        print("command silence: detected \(String(format: "%.2f", detected ?? -1)) s after the read (timeout 2 s)")
    }

    // MARK: - Task management during an outage

    func testTaskManagementDuringAnOutageIsAnsweredAtOnce() throws {
        let session = try connect(ISCSIRecoveryPolicy(outageTimeout: 30, keepaliveInterval: 1, maxReconnectDelay: 0.5))
        daemon.kill()
        waitUntil("the session to notice the kill", timeout: 5) { !session.connectionStatus.loggedIn }
        let reads = (0..<2).map { _ in makeBuffers(4096) }
        for (i, r) in reads.enumerated() {
            XCTAssertTrue(submit(session, TestCDB.read16(lba: UInt64(i) * 8, blocks: 8), r, .fromDevice, token: i))
        }
        let t = Date()
        XCTAssertEqual(taskManagement(session, .abortTask(token: 0)).wait(timeout: 2), .functionComplete)
        XCTAssertEqual(sink.completion(of: 0, timeout: 1)?.outcome, .aborted)
        XCTAssertEqual(taskManagement(session, .logicalUnitReset).wait(timeout: 2), .failed)
        XCTAssertEqual(taskManagement(session, .queryTask(token: 1)).wait(timeout: 2), .functionSucceeded)
        XCTAssertLessThan(Date().timeIntervalSince(t), 1, "answered without waiting for the target")
        XCTAssertEqual(session.connectionStatus.heldCommands, 1)

        try daemon.launch()
        let (done, _) = completeRetryingUnitAttention(session, token: 1, timeout: 15) {
            submit(session, TestCDB.read16(lba: 8, blocks: 8), reads[1], .fromDevice, token: 1)
        }
        XCTAssertEqual(done?.status, .good)
        XCTAssertEqual(sink.all.filter { $0.token == 0 }.count, 1, "the aborted command was never sent again")
    }

    // MARK: - Configuration errors

    func testBadCHAPCredentialsAreOneClearLine() throws {
        try daemon.requireCHAP(user: "vususer", password: "vussecret123")
        let good = "iscsi://vususer%vussecret123@127.0.0.1:\(daemon.portalPort)/\(daemon.iqn)/1"
        XCTAssertNoThrow(try connect(.default, url: good))
        for (name, url) in [
            ("wrong password", "iscsi://vususer%wrongsecret1@127.0.0.1:\(daemon.portalPort)/\(daemon.iqn)/1"),
            ("no credentials", daemon.url),
        ] {
            XCTAssertThrowsError(try connect(.default, url: url)) { error in
                let text = "\(error)"
                print("\(name) reads: \(text)")
                XCTAssertFalse(text.contains("\n"))
                XCTAssertTrue(text.localizedCaseInsensitiveContains("CHAP") || text.localizedCaseInsensitiveContains("authentication"),
                              "\(name): the message should name authentication: \(text)")
                XCTAssertFalse(text.contains("wrongsecret1"), "the password must not be printed")
            }
        }
    }
}
