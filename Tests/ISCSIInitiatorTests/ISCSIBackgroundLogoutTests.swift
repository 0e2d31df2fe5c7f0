import Dispatch
import Foundation
import XCTest
@testable import ISCSIInitiator

/// Many sessions closed at once (a LUN set removed, a frontend gone, shutdown during an outage):
/// their logouts run side by side, each within its own timeout, and leave nothing running.
/// Uses ISCSIOutageTests' daemon, queue and sink (same setUp and tearDown).
extension ISCSIOutageTests {
    /// 8 LUNs × 3 request queues: more logouts than the machine has CPUs by far.
    private static let manySessions = 24
    /// BackgroundLogout's default, which `close()` uses.
    private static let logoutTimeout = 5.0

    /// `count` logged-in sessions that notice nothing by themselves (no keep-alive, no command
    /// timeout), so each still holds a logged-in context when it is closed.
    private func connectMany(_ count: Int, url: String? = nil) throws -> [ISCSISession] {
        // Logouts of earlier tests must not count towards this one's.
        XCTAssertTrue(ISCSISession.waitForBackgroundLogouts(timeout: 10))
        let quiet = ISCSIRecoveryPolicy(outageTimeout: 30, keepaliveInterval: 0, commandTimeout: 0)
        return try (0..<count).map { _ in try connect(quiet, url: url) }
    }

    /// How many of the relay's connections carry a Logout Request (0x06) as their last PDU out.
    private func logoutRequests(_ relay: TCPRelay) -> Int {
        relay.connections.filter { ISCSIStreamReport($0.toTarget, headerDigest: false).fullFeatureOpcodes.last == 0x06 }.count
    }

    /// How many of the relay's connections carry a Logout Response (0x26) from the target.
    private func logoutResponses(_ relay: TCPRelay) -> Int {
        relay.connections.filter { ISCSIStreamReport($0.toInitiator, headerDigest: false).fullFeatureOpcodes.contains(0x26) }.count
    }

    /// Closes every session; returns the slowest close.
    private func closeAll(_ sessions: [ISCSISession]) -> Double {
        var slowest = 0.0
        for session in sessions {
            let start = Date()
            queue.sync { session.close() }
            slowest = max(slowest, Date().timeIntervalSince(start))
        }
        return slowest
    }

    func testManyLogoutsToAFrozenTargetRunSideBySide() throws {
        let relay = try TCPRelay(targetPort: daemon.portalPort)
        defer { relay.stop() }
        let sessions = try connectMany(Self.manySessions, url: "iscsi://127.0.0.1:\(relay.port)/\(daemon.iqn)/1")
        XCTAssertEqual(try daemon.sessionIDs().count, Self.manySessions)

        daemon.pause()
        let closed = Date()
        let slowestClose = closeAll(sessions)
        XCTAssertLessThan(slowestClose, 0.1, "every close returns without the target's logout response")

        // Side by side, every Logout Request goes out at once, answered or not.
        let allSent = waitUntil("every logout request on the wire", timeout: 1) {
            logoutRequests(relay) == Self.manySessions
        }
        if allSent == nil {
            print("\(logoutRequests(relay)) of \(Self.manySessions) logout requests on the wire 1 s after the closes")
        }
        XCTAssertFalse(ISCSISession.waitForBackgroundLogouts(timeout: 0.2), "unanswered, the logouts still run")
        // And each logout gives up at its own timeout, counted from its close: all of them
        // within it plus a little.
        let bound = Self.logoutTimeout + 2
        let allEnded = ISCSISession.waitForBackgroundLogouts(timeout: bound - Date().timeIntervalSince(closed))
        let ended = Date().timeIntervalSince(closed)
        if !allEnded {
            // Measure how long they did take, and leave none running into the next test.
            let late = ISCSISession.waitForBackgroundLogouts(timeout: 120)
            print("\(Self.manySessions) logouts to a frozen target: not all ended within \(bound) s; "
                  + "all ended: \(late) after \(String(format: "%.2f", Date().timeIntervalSince(closed))) s")
        }
        XCTAssertTrue(allEnded, "all \(Self.manySessions) logouts ended within \(bound) s of the closes")
        // libiscsi times the logout PDU out in whole seconds: between 4 and 5 s.
        XCTAssertGreaterThan(ended, Self.logoutTimeout - 1.5, "each logout was given its time")
        print("\(Self.manySessions) logouts to a frozen target: closes took at most "
              + "\(String(format: "%.4f", slowestClose)) s, requests on the wire after "
              + (allSent.map { String(format: "%.3f s", $0) } ?? "more than 1 s")
              + ", all logouts ended \(String(format: "%.2f", ended)) s after the closes")
        assertLogoutsLeaveNothingRunning()
    }

    func testManyLogoutsToALiveTargetAreAllSentAndEndQuickly() throws {
        let relay = try TCPRelay(targetPort: daemon.portalPort)
        defer { relay.stop() }
        let sessions = try connectMany(Self.manySessions, url: "iscsi://127.0.0.1:\(relay.port)/\(daemon.iqn)/1")
        XCTAssertEqual(try daemon.sessionIDs().count, Self.manySessions)

        let closed = Date()
        XCTAssertLessThan(closeAll(sessions), 0.1)
        XCTAssertTrue(ISCSISession.waitForBackgroundLogouts(timeout: 2), "every logout answered within 2 s")
        let ended = Date().timeIntervalSince(closed)
        waitUntil("tgtd to end every session", timeout: 5) { (try? daemon.sessionIDs().isEmpty) == true }
        // On the wire: each connection's last PDU out is a Logout Request (0x06), answered by
        // a Logout Response (0x26).
        waitUntil("the relay to record every logout response", timeout: 3) { logoutResponses(relay) == Self.manySessions }
        XCTAssertEqual(relay.connections.count, Self.manySessions)
        XCTAssertEqual(logoutRequests(relay), Self.manySessions)
        print("\(Self.manySessions) logouts to a live target: all ended \(String(format: "%.3f", ended)) s after the closes")
        assertLogoutsLeaveNothingRunning()
    }

    /// A live target's logouts do not queue behind a silent target's: closing everything at
    /// once (shutdown during an outage of one target) still logs out of the targets that answer.
    func testLogoutsToALiveTargetDoNotWaitBehindAFrozenOnes() throws {
        let live = try TargetDaemon(instance: 2)
        defer { live.stop() }
        let relay = try TCPRelay(targetPort: live.portalPort)
        defer { relay.stop() }
        let frozen = try connectMany(Self.manySessions)
        let answering = try (0..<8).map { _ in
            try connect(ISCSIRecoveryPolicy(outageTimeout: 30, keepaliveInterval: 0, commandTimeout: 0),
                        url: "iscsi://127.0.0.1:\(relay.port)/\(live.iqn)/1")
        }
        XCTAssertEqual(try live.sessionIDs().count, answering.count)

        daemon.pause()
        let closed = Date()
        XCTAssertLessThan(closeAll(frozen + answering), 0.1)
        // Every logout of the live target is answered within 2 s.
        let answered = waitUntil("the live target to answer every logout", timeout: 2) {
            logoutResponses(relay) == answering.count
        }
        XCTAssertEqual(try live.sessionIDs(), [], "the live target ended every session")
        print("logouts behind \(Self.manySessions) to a frozen target: the live target's \(answering.count) answered "
              + (answered.map { String(format: "%.3f s", $0) } ?? "not within 2 s") + " after the closes")
        XCTAssertTrue(ISCSISession.waitForBackgroundLogouts(timeout: Self.logoutTimeout + 2 - Date().timeIntervalSince(closed)))
        if answered == nil {
            print("  the live target answered \(logoutResponses(relay)) of \(answering.count) logouts in all")
        }
    }

    /// Once every logout has ended: one logout thread is left (the process's, however many
    /// logouts it ran), and it sleeps (the process uses next to no CPU for a second).
    private func assertLogoutsLeaveNothingRunning(file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(threadCount(named: LogoutThread.name), 1, "one logout thread", file: file, line: line)
        let before = cpuSeconds()
        Thread.sleep(forTimeInterval: 1)
        let used = cpuSeconds() - before
        XCTAssertLessThan(used, 0.05, "no thread spins once the logouts have ended (\(used) s of CPU in 1 s)",
                          file: file, line: line)
    }

    /// User plus system CPU time of the whole process.
    private func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    /// How many of the process's threads are named `name` (/proc/self/task/*/comm).
    private func threadCount(named name: String) -> Int {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.filter { task in
            let comm = try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)
            return comm?.trimmingCharacters(in: .whitespacesAndNewlines) == name
        }.count
    }
}
