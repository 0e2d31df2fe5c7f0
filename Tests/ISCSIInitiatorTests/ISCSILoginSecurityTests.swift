import Dispatch
import Foundation
import XCTest
import SCSICore
@testable import ISCSIInitiator
import ServerLog

/// CHAP, mutual CHAP and header digests against a real tgtd of each test's own. Secrets come
/// from files, as the server reads them; every failure must be one line that names the cause
/// and never the secret. Header digests are checked on the wire, through a recording relay.
final class ISCSILoginSecurityTests: XCTestCase, SessionDrivingTestCase {
    private var daemon: TargetDaemon!
    private var relay: TCPRelay?
    var queue: DispatchQueue!
    private var sink: RecordingSink!
    private var sessions: [ISCSISession] = []
    var buffers: [IOBuffers] = []
    private var directory: URL!

    private static let initiatorSecret = "initiator-secret-4711"
    private static let targetSecret = "target-secret-0815"
    private static let wrongSecret = "wrong-secret-999"

    override func setUpWithError() throws {
        queue = DispatchQueue(label: "iscsi-login-security-test")
        sink = RecordingSink()
        daemon = try TargetDaemon(instance: 2)
        directory = daemon.directory.appendingPathComponent("secrets")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        if ProcessInfo.processInfo.environment["VUS_TEST_DEBUG"] != nil { Log.level = .debug }
    }

    override func tearDown() {
        for session in sessions { queue.sync { session.close() } }
        sessions = []
        relay?.stop()
        relay = nil
        daemon?.stop()
        daemon = nil
        buffers.forEach { $0.free() }
        buffers = []
    }

    /// A CHAP credential whose secret is read from a 0600 file, as `--chap-secret-file` does.
    private func credentials(_ user: String, _ secret: String) throws -> ISCSICHAPCredentials {
        let path = directory.appendingPathComponent("\(user)-\(UUID().uuidString.prefix(6))").path
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data((secret + "\n").utf8),
                                                    attributes: [.posixPermissions: 0o600]))
        return ISCSICHAPCredentials(user: user, secret: try ISCSISecret(contentsOfFile: path))
    }

    private func settings(chap: ISCSICHAPCredentials? = nil, mutual: ISCSICHAPCredentials? = nil,
                          digest: ISCSIHeaderDigest = .preferNone) -> ISCSILoginSettings {
        ISCSILoginSettings(initiatorName: "iqn.2024-01.test.iscsiinitiator:security", chap: chap, mutualCHAP: mutual,
                           headerDigest: digest)
    }

    private func url(port: Int? = nil) throws -> ISCSIURL {
        try ISCSIURL(parsing: "iscsi://127.0.0.1:\(port ?? daemon.portalPort)/\(daemon.iqn)/1")
    }

    private func connect(_ login: ISCSILoginSettings, port: Int? = nil,
                         recovery: ISCSIRecoveryPolicy = .default) throws -> ISCSISession {
        let session = try ISCSISession(url: try url(port: port), login: login, queue: queue, maxOutstanding: 256,
                                       loginTimeout: 5, recovery: recovery)
        queue.sync { session.completionSink = sink }
        sessions.append(session)
        return session
    }

    /// Asserts a login error: one line, kind `.login`, containing `mentions`, no secret.
    private func assertLoginFails(_ login: ISCSILoginSettings, _ mentions: [String], file: StaticString = #filePath,
                                  line: UInt = #line) {
        XCTAssertThrowsError(try connect(login), file: file, line: line) { error in
            let text = "\(error)"
            print("login error reads: \(text)")
            XCTAssertEqual((error as? ISCSIError)?.kind, .login, text, file: file, line: line)
            XCTAssertFalse(text.contains("\n"), file: file, line: line)
            for mention in mentions {
                XCTAssertTrue(text.contains(mention), "'\(mention)' missing in: \(text)", file: file, line: line)
            }
            for secret in [Self.initiatorSecret, Self.targetSecret, Self.wrongSecret] {
                XCTAssertFalse(text.contains(secret), "a secret leaked: \(text)", file: file, line: line)
            }
        }
    }

    /// Writes a pattern and reads it back (retrying a unit attention after a new nexus).
    private func assertWriteReadBack(_ session: ISCSISession, seed: UInt8, tokenBase: Int,
                                     file: StaticString = #filePath, line: UInt = #line) {
        let bytes = 64 * 1024
        let out = makeBuffers(bytes)
        for i in 0..<bytes { out.data[i] = UInt8(truncatingIfNeeded: i &* 7 &+ Int(seed)) }
        let back = makeBuffers(bytes)
        var token = tokenBase
        func run(_ cdb: [UInt8], _ b: IOBuffers, _ direction: SCSIDataDirection) -> RecordedCompletion? {
            for _ in 0..<4 {
                token += 1
                XCTAssertTrue(submit(session, cdb, b, direction, token: token), file: file, line: line)
                guard let done = sink.completion(of: token, timeout: 15) else { return nil }
                let unitAttention = done.status == .checkCondition && done.sense.count > 2 && done.sense[2] & 0x0F == 6
                if !unitAttention { return done }
            }
            return nil
        }
        XCTAssertEqual(run(TestCDB.write16(lba: 256, blocks: 128), out, .toDevice)?.status, .good, file: file, line: line)
        XCTAssertEqual(run(TestCDB.read16(lba: 256, blocks: 128), back, .fromDevice)?.status, .good, file: file, line: line)
        XCTAssertTrue(memcmp(out.data.baseAddress!, back.data.baseAddress!, bytes) == 0, "data differs", file: file, line: line)
    }

    // MARK: - One-way CHAP

    func testOneWayCHAPFromASecretFile() throws {
        try daemon.requireCHAP(user: "vus-initiator", password: Self.initiatorSecret)
        let session = try connect(settings(chap: credentials("vus-initiator", Self.initiatorSecret)))
        assertWriteReadBack(session, seed: 1, tokenBase: 0)
    }

    func testWrongCHAPSecretIsOneClearLine() throws {
        try daemon.requireCHAP(user: "vus-initiator", password: Self.initiatorSecret)
        assertLoginFails(settings(chap: try credentials("vus-initiator", Self.wrongSecret)),
                         ["Authentication failure", "refused CHAP user 'vus-initiator'", "secret from file"])
        assertLoginFails(settings(chap: try credentials("someone-else", Self.initiatorSecret)),
                         ["refused CHAP user 'someone-else'"])
    }

    func testNoCredentialsAgainstACHAPTargetIsOneClearLine() throws {
        try daemon.requireCHAP(user: "vus-initiator", password: Self.initiatorSecret)
        assertLoginFails(settings(), ["Authentication failure", "requires CHAP and none is configured", "--chap-user"])
    }

    /// The URL's credentials still work; the same in the settings is no conflict.
    func testCHAPFromTheURLStillWorks() throws {
        try daemon.requireCHAP(user: "vus-initiator", password: Self.initiatorSecret)
        let withCredentials = "iscsi://vus-initiator%\(Self.initiatorSecret)@127.0.0.1:\(daemon.portalPort)/\(daemon.iqn)/1"
        let session = try ISCSISession(url: try ISCSIURL(parsing: withCredentials),
                                       initiatorName: "iqn.2024-01.test.iscsiinitiator:security", queue: queue)
        sessions.append(session)
        XCTAssertTrue(session.connectionStatus.loggedIn)
        XCTAssertThrowsError(try ISCSISession(url: try ISCSIURL(parsing: withCredentials),
                                              login: settings(chap: credentials("vus-initiator", Self.wrongSecret)),
                                              queue: queue)) { error in
            XCTAssertEqual((error as? ISCSIError)?.kind, .configuration)
            XCTAssertFalse("\(error)".contains(Self.initiatorSecret) || "\(error)".contains(Self.wrongSecret), "\(error)")
        }
    }

    // MARK: - Mutual CHAP

    func testMutualCHAP() throws {
        try daemon.requireCHAP(user: "vus-initiator", password: Self.initiatorSecret)
        try daemon.answerMutualCHAP(user: "vus-target", password: Self.targetSecret)
        // Debug logging on, so that libiscsi's own messages are checked for secrets too.
        let previousLevel = Log.level
        Log.level = .debug
        var session: ISCSISession?
        let log = try capturingStandardError {
            session = try connect(settings(chap: credentials("vus-initiator", Self.initiatorSecret),
                                           mutual: credentials("vus-target", Self.targetSecret)))
        }
        Log.level = previousLevel
        XCTAssertTrue(log.contains("CHAP user 'vus-initiator'") && log.contains("mutual CHAP (target 'vus-target')"), log)
        XCTAssertFalse(log.contains(Self.initiatorSecret) || log.contains(Self.targetSecret), "a secret reached the log")
        assertWriteReadBack(try XCTUnwrap(session), seed: 2, tokenBase: 0)
    }

    /// The initiator itself must notice a target that does not know the expected secret.
    func testMutualCHAPWithAWrongTargetSecretFails() throws {
        try daemon.requireCHAP(user: "vus-initiator", password: Self.initiatorSecret)
        try daemon.answerMutualCHAP(user: "vus-target", password: Self.targetSecret)
        assertLoginFails(settings(chap: try credentials("vus-initiator", Self.initiatorSecret),
                                  mutual: try credentials("vus-target", Self.wrongSecret)),
                         ["mutual CHAP failed", "did not prove", "secret from file"])
        assertLoginFails(settings(chap: try credentials("vus-initiator", Self.initiatorSecret),
                                  mutual: try credentials("another-target", Self.targetSecret)),
                         ["mutual CHAP failed", "answered as 'vus-target'", "expected 'another-target'"])
    }

    /// A target (or an impostor) without a mutual CHAP account cannot pass for the real one.
    func testMutualCHAPAgainstATargetThatCannotAnswerFails() throws {
        try daemon.requireCHAP(user: "vus-initiator", password: Self.initiatorSecret)
        XCTAssertThrowsError(try connect(settings(chap: credentials("vus-initiator", Self.initiatorSecret),
                                                  mutual: credentials("vus-target", Self.targetSecret)))) { error in
            print("no outgoing account reads: \(error)")
            XCTAssertEqual((error as? ISCSIError)?.kind, .login)
            XCTAssertTrue("\(error)".contains("no mutual CHAP (outgoing) account"), "\(error)")
            XCTAssertFalse("\(error)".contains(Self.targetSecret))
        }
    }

    func testMutualCHAPAgainstATargetWithoutCHAPFails() throws {
        XCTAssertThrowsError(try connect(settings(chap: credentials("vus-initiator", Self.initiatorSecret),
                                                  mutual: credentials("vus-target", Self.targetSecret)))) { error in
            print("target without CHAP reads: \(error)")
            XCTAssertEqual((error as? ISCSIError)?.kind, .login)
            XCTAssertTrue("\(error)".contains("did not authenticate itself"), "\(error)")
        }
    }

    // MARK: - Header digest, checked on the wire

    /// Logs in through a relay and returns the login keys both ways and the relayed bytes.
    private func relayedLogin(_ digest: ISCSIHeaderDigest) throws -> (offered: String?, answered: String?) {
        relay?.stop()
        let relay = try TCPRelay(targetPort: daemon.portalPort)
        self.relay = relay
        let session = try connect(settings(digest: digest), port: relay.port)
        queue.sync { session.close() }
        guard let recording = relay.connections.first else { throw TestError("the relay saw no connection") }
        let offered = ISCSIStreamReport(recording.toTarget, headerDigest: false).value(of: "HeaderDigest")
        let answered = ISCSIStreamReport(recording.toInitiator, headerDigest: false).value(of: "HeaderDigest")
        return (offered, answered)
    }

    /// What each choice offers, and what tgt answers when it allows both: tgt takes CRC32C
    /// whenever both sides list it, whatever the order (usr/iscsi/param.c digest_set_val), where
    /// RFC 7143 §6.2.1 would have the target take the first value of the initiator's list.
    func testEachHeaderDigestChoiceIsOfferedAsDocumented() throws {
        try daemon.setHeaderDigest("None,CRC32C")
        let expected: [(ISCSIHeaderDigest, String, String)] = [
            (.none, "None", "None"), (.preferNone, "None,CRC32C", "CRC32C"),
            (.preferCRC32C, "CRC32C,None", "CRC32C"), (.crc32c, "CRC32C", "CRC32C"),
        ]
        for (digest, offer, answer) in expected {
            let (offered, answered) = try relayedLogin(digest)
            print("header digest \(digest): offered \(offered ?? "-"), target answered \(answered ?? "-")")
            XCTAssertEqual(offered, offer, "\(digest)")
            XCTAssertEqual(answered, answer, "\(digest)")
        }
    }

    func testCRC32CHeaderDigestIsUsedOnTheWireAndIOWorks() throws {
        try daemon.setHeaderDigest("CRC32C,None")
        let relay = try TCPRelay(targetPort: daemon.portalPort)
        self.relay = relay
        let session = try connect(settings(digest: .crc32c), port: relay.port)
        assertWriteReadBack(session, seed: 3, tokenBase: 0)
        queue.sync { session.close() }
        let recording = try XCTUnwrap(relay.connections.first)
        let toTarget = ISCSIStreamReport(recording.toTarget, headerDigest: true)
        let toInitiator = ISCSIStreamReport(recording.toInitiator, headerDigest: true)
        XCTAssertEqual(toTarget.value(of: "HeaderDigest"), "CRC32C")
        XCTAssertEqual(toInitiator.value(of: "HeaderDigest"), "CRC32C")
        print("crc32c: \(toTarget.fullFeaturePDUs) PDUs to the target, \(toInitiator.fullFeaturePDUs) back, "
              + "all with a header digest")
        XCTAssertGreaterThan(toTarget.fullFeaturePDUs, 3)
        XCTAssertGreaterThan(toInitiator.fullFeaturePDUs, 3)
        XCTAssertEqual(toTarget.badDigests, 0, "every PDU header sent carries its CRC32C")
        XCTAssertEqual(toInitiator.badDigests, 0, "every PDU header received carries its CRC32C")
        // Control: read without digests, the same stream does not parse as digest-carrying.
        XCTAssertGreaterThan(ISCSIStreamReport(recording.toInitiator, headerDigest: false).fullFeaturePDUs, 0)
    }

    /// The target's answer decides: a target that allows no digest answers None, and libiscsi
    /// (1.19, lib/login.c) then runs without one although only CRC32C was offered. Documented
    /// in Docs/SECURITY.md; this test notices if either side changes.
    func testCRC32COnlyAgainstATargetWithoutDigests() throws {
        try daemon.setHeaderDigest("None")
        let (offered, answered) = try relayedLogin(.crc32c)
        print("crc32c against a None-only target: offered \(offered ?? "-"), answered \(answered ?? "-")")
        XCTAssertEqual(offered, "CRC32C")
        XCTAssertNotEqual(answered, "CRC32C")
    }

    // MARK: - Reconnect

    /// A dropped connection logs in again with CHAP, mutual CHAP and the header digest.
    func testReconnectLogsInAgainWithCHAPAndDigest() throws {
        try daemon.requireCHAP(user: "vus-initiator", password: Self.initiatorSecret)
        try daemon.answerMutualCHAP(user: "vus-target", password: Self.targetSecret)
        try daemon.setHeaderDigest("CRC32C")
        let relay = try TCPRelay(targetPort: daemon.portalPort)
        self.relay = relay
        let session = try connect(settings(chap: credentials("vus-initiator", Self.initiatorSecret),
                                           mutual: credentials("vus-target", Self.targetSecret), digest: .crc32c),
                                  port: relay.port,
                                  recovery: ISCSIRecoveryPolicy(outageTimeout: 30, keepaliveInterval: 1, maxReconnectDelay: 0.5))
        assertWriteReadBack(session, seed: 4, tokenBase: 0)

        try daemon.dropConnections()
        let deadline = Date().addingTimeInterval(15)
        while session.connectionStatus.reconnects < 1 && Date() < deadline { usleep(50_000) }
        XCTAssertEqual(session.connectionStatus.reconnects, 1, "logged in again")
        assertWriteReadBack(session, seed: 5, tokenBase: 100)
        queue.sync { session.close() }

        let logins = relay.connections
        XCTAssertEqual(logins.count, 2, "the first login and the reconnect")
        for (index, recording) in logins.enumerated() {
            let toTarget = ISCSIStreamReport(recording.toTarget, headerDigest: true)
            let toInitiator = ISCSIStreamReport(recording.toInitiator, headerDigest: true)
            XCTAssertEqual(toTarget.value(of: "CHAP_N"), "vus-initiator", "login \(index) answered the target's challenge")
            XCTAssertNotNil(toTarget.value(of: "CHAP_C"), "login \(index) challenged the target")
            XCTAssertEqual(toInitiator.value(of: "CHAP_N"), "vus-target", "login \(index): the target proved itself")
            XCTAssertEqual(toInitiator.value(of: "HeaderDigest"), "CRC32C", "login \(index)")
            XCTAssertGreaterThan(toTarget.fullFeaturePDUs, 0, "login \(index)")
            XCTAssertEqual(toTarget.badDigests + toInitiator.badDigests, 0, "login \(index)")
            for secret in [Self.initiatorSecret, Self.targetSecret] {
                XCTAssertNil(recording.toTarget.firstRange(of: Array(secret.utf8)), "CHAP never sends the secret")
                XCTAssertNil(recording.toInitiator.firstRange(of: Array(secret.utf8)), "CHAP never sends the secret")
            }
        }
    }

    /// A reconnect whose CHAP login is refused (the secret changed on the target) keeps trying
    /// and says why, without the secret; it succeeds once the target accepts again.
    func testReconnectRefusedByCHAPIsLoggedClearly() throws {
        try daemon.requireCHAP(user: "vus-initiator", password: Self.initiatorSecret)
        let session = try connect(settings(chap: credentials("vus-initiator", Self.initiatorSecret)),
                                  recovery: ISCSIRecoveryPolicy(outageTimeout: 30, keepaliveInterval: 1, maxReconnectDelay: 0.5))
        daemon.kill()
        // The target comes back with another secret for this user.
        try daemon.requireCHAP(user: "vus-initiator", password: Self.wrongSecret)
        let log = try capturingStandardError {
            try daemon.launch()
            let deadline = Date().addingTimeInterval(4)
            while Date() < deadline { usleep(100_000) }
        }
        XCTAssertFalse(session.connectionStatus.loggedIn)
        XCTAssertTrue(log.contains("reconnect to") && log.contains("refused CHAP user 'vus-initiator'"), log)
        XCTAssertFalse(log.contains(Self.initiatorSecret) || log.contains(Self.wrongSecret), "a secret reached the log")

        // The target's secret is put right: the next attempt logs in.
        daemon.kill()
        try daemon.requireCHAP(user: "vus-initiator", password: Self.initiatorSecret)
        try daemon.launch()
        let deadline = Date().addingTimeInterval(15)
        while !session.connectionStatus.loggedIn && Date() < deadline { usleep(50_000) }
        XCTAssertTrue(session.connectionStatus.loggedIn)
        assertWriteReadBack(session, seed: 6, tokenBase: 0)
    }
}
