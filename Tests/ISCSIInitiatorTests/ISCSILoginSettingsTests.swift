import Foundation
import XCTest
@testable import ISCSIInitiator

/// Login settings without a target: secrets from files and variables, their checks and
/// redaction, URL/settings precedence, initiator names, header digest spellings.
final class ISCSILoginSettingsTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("iscsi-login-tests-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: directory)
    }

    private func secretFile(_ contents: String, mode: Int = 0o600, name: String = "secret") throws -> String {
        let path = directory.appendingPathComponent(name).path
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(contents.utf8)))
        XCTAssertEqual(chmod(path, mode_t(mode)), 0)
        return path
    }

    /// Asserts that `body` throws a one-line `.configuration` error containing every one of
    /// `mentions` and none of `secrets`; returns its text.
    @discardableResult
    private func assertConfigurationError(_ mentions: [String], secrets: [String] = [], file: StaticString = #filePath,
                                          line: UInt = #line, _ body: () throws -> Void) -> String? {
        do {
            try body()
            XCTFail("no error; expected one mentioning \(mentions)", file: file, line: line)
            return nil
        } catch let error as ISCSIError {
            let text = "\(error)"
            XCTAssertEqual(error.kind, .configuration, text, file: file, line: line)
            XCTAssertFalse(text.contains("\n"), file: file, line: line)
            for mention in mentions { XCTAssertTrue(text.contains(mention), "'\(mention)' missing in: \(text)", file: file, line: line) }
            for secret in secrets { XCTAssertFalse(text.contains(secret), "the secret leaked: \(text)", file: file, line: line) }
            return text
        } catch {
            XCTFail("unexpected error type: \(error)", file: file, line: line)
            return nil
        }
    }

    // MARK: - Secrets from files

    func testSecretFileFirstLineWithoutLineBreak() throws {
        for (contents, expected) in [("filesecret12\n", "filesecret12"), ("crlfsecret12\r\n", "crlfsecret12"),
                                     ("nonewline123", "nonewline123"), ("first-line-1\nsecond line\n", "first-line-1"),
                                     ("with inner space\n", "with inner space")] {
            let secret = try ISCSISecret(contentsOfFile: try secretFile(contents))
            XCTAssertEqual(secret.value, expected)
            XCTAssertTrue(secret.warnings.isEmpty, "\(secret.warnings)")
            XCTAssertTrue(secret.origin.contains(directory.path))
        }
    }

    func testSecretFileReadableByOthersIsRefused() throws {
        for mode in [0o644, 0o604, 0o602, 0o666] {
            let path = try secretFile("worldreadable12\n", mode: mode, name: "secret-\(mode)")
            assertConfigurationError([path, "chmod 600", "0" + String(mode, radix: 8)], secrets: ["worldreadable12"]) {
                _ = try ISCSISecret(contentsOfFile: path)
            }
        }
    }

    func testSecretFileReadableByGroupWarns() throws {
        let path = try secretFile("groupreadable12\n", mode: 0o640)
        let secret = try ISCSISecret(contentsOfFile: path)
        XCTAssertEqual(secret.value, "groupreadable12")
        XCTAssertEqual(secret.warnings.count, 1)
        XCTAssertTrue(secret.warnings[0].contains(path) && secret.warnings[0].contains("0640"), secret.warnings[0])
        XCTAssertFalse(secret.warnings[0].contains("groupreadable12"))
    }

    func testBadSecretFilesAreOneClearLine() throws {
        let missing = directory.appendingPathComponent("missing").path
        assertConfigurationError([missing, "No such file"]) { _ = try ISCSISecret(contentsOfFile: missing) }
        let empty = try secretFile("", name: "empty")
        assertConfigurationError([empty, "is empty"]) { _ = try ISCSISecret(contentsOfFile: empty) }
        let blank = try secretFile("\nsecond-line-secret\n", name: "blank")
        assertConfigurationError([blank, "empty first line"], secrets: ["second-line-secret"]) {
            _ = try ISCSISecret(contentsOfFile: blank)
        }
        let long = try secretFile(String(repeating: "x", count: 300) + "\n", name: "long")
        assertConfigurationError([long, "300 bytes", "255"]) { _ = try ISCSISecret(contentsOfFile: long) }
        let tab = try secretFile("tab\tsecret-12\n", name: "tab")
        assertConfigurationError([tab, "control character"], secrets: ["tab\tsecret-12"]) {
            _ = try ISCSISecret(contentsOfFile: tab)
        }
        let binary = try secretFile("", name: "binary")
        try Data([0xFF, 0xFE, 0x41, 0x42, 0x0A]).write(to: URL(fileURLWithPath: binary))
        assertConfigurationError([binary, "UTF-8"]) { _ = try ISCSISecret(contentsOfFile: binary) }
        assertConfigurationError([directory.path, "directory"]) { _ = try ISCSISecret(contentsOfFile: directory.path) }
    }

    /// Process substitution (`--chap-secret-file <(pass show x)`) hands over a pipe.
    func testSecretFromAPipe() throws {
        var fds: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fds), 0)
        defer { close(fds[0]) }
        let text = Array("pipesecret-123\n".utf8)
        XCTAssertEqual(write(fds[1], text, text.count), text.count)
        close(fds[1])
        let secret = try ISCSISecret(contentsOfFile: "/dev/fd/\(fds[0])")
        XCTAssertEqual(secret.value, "pipesecret-123")
    }

    // MARK: - Secrets from the environment and from text

    func testSecretFromEnvironment() throws {
        let name = "VUS_TEST_CHAP_SECRET_\(getpid())"
        setenv(name, "envsecret-1234", 1)
        defer { unsetenv(name) }
        let secret = try ISCSISecret(environmentVariable: name)
        XCTAssertEqual(secret.value, "envsecret-1234")
        XCTAssertEqual(secret.origin, "environment variable \(name)")

        setenv(name, "", 1)
        assertConfigurationError([name, "is empty"]) { _ = try ISCSISecret(environmentVariable: name) }
        unsetenv(name)
        assertConfigurationError([name, "not set"]) { _ = try ISCSISecret(environmentVariable: name) }
        assertConfigurationError(["A=B", "not an environment variable name"]) { _ = try ISCSISecret(environmentVariable: "A=B") }
    }

    func testSecretChecksAndWarnings() throws {
        XCTAssertEqual(try ISCSISecret(String(repeating: "s", count: 255), origin: "test").value.utf8.count, 255)
        assertConfigurationError(["256 bytes"]) { _ = try ISCSISecret(String(repeating: "s", count: 256), origin: "test") }
        // 255 bytes counts UTF-8 bytes, not characters.
        assertConfigurationError(["256 bytes"]) { _ = try ISCSISecret(String(repeating: "é", count: 128), origin: "test") }
        assertConfigurationError(["is empty"]) { _ = try ISCSISecret("", origin: "test") }
        assertConfigurationError(["control character"], secrets: ["line1"]) { _ = try ISCSISecret("line1\nline2-long", origin: "test") }

        let short = try ISCSISecret("short1", origin: "test")
        XCTAssertEqual(short.warnings.count, 1)
        XCTAssertTrue(short.warnings[0].contains("6 bytes") && short.warnings[0].contains("RFC 7143"), short.warnings[0])
        XCTAssertFalse(short.warnings[0].contains("short1"))
        XCTAssertTrue(try ISCSISecret("exactly12chr", origin: "test").warnings.isEmpty)
        XCTAssertEqual(try ISCSISecret(" padded-secret ", origin: "test").warnings.count, 1)
    }

    func testSecretsAreRedactedEverywhere() throws {
        let secret = try ISCSISecret("hunter2-hunter2", origin: "file '/etc/x'")
        var dumped = ""
        dump(secret, to: &dumped)
        let credentials = ISCSICHAPCredentials(user: "alice", secret: secret)
        let mutual = ISCSICHAPCredentials(user: "target", secret: try ISCSISecret("other-secret-99", origin: "test"))
        let settings = ISCSILoginSettings(initiatorName: "iqn.2024-01.test:x", chap: credentials, mutualCHAP: mutual)
        var dumpedSettings = ""
        dump(settings, to: &dumpedSettings)
        for text in ["\(secret)", String(reflecting: secret), dumped, "\(credentials)", String(reflecting: credentials),
                     "\(settings)", String(reflecting: settings), dumpedSettings, "\([settings])"] {
            XCTAssertFalse(text.contains("hunter2"), text)
            XCTAssertFalse(text.contains("other-secret-99"), text)
        }
        XCTAssertTrue("\(settings)".contains("alice") && "\(settings)".contains("/etc/x"), "\(settings)")
    }

    // MARK: - Settings and URLs

    private func settings(chap: (String, String)? = nil, mutual: (String, String)? = nil) throws -> ISCSILoginSettings {
        ISCSILoginSettings(initiatorName: "iqn.2024-01.test:x",
                           chap: try chap.map { ISCSICHAPCredentials(user: $0.0, secret: try ISCSISecret($0.1, origin: "test")) },
                           mutualCHAP: try mutual.map { ISCSICHAPCredentials(user: $0.0, secret: try ISCSISecret($0.1, origin: "test")) })
    }

    func testCredentialsFromTheURLOrTheSettings() throws {
        let plain = try ISCSIURL(parsing: "iscsi://host/iqn.2024-01.test:t/1")
        let withCredentials = try ISCSIURL(parsing: "iscsi://alice%urlsecret-123@host/iqn.2024-01.test:t/1")
        let withUser = try ISCSIURL(parsing: "iscsi://alice@host/iqn.2024-01.test:t/1")

        XCTAssertNil(try settings().resolved(for: plain).chap)
        let fromURL = try settings().resolved(for: withCredentials).chap
        XCTAssertEqual(fromURL?.user, "alice")
        XCTAssertEqual(fromURL?.secret.value, "urlsecret-123")
        XCTAssertEqual(fromURL?.secret.origin, "the URL")
        let fromSettings = try settings(chap: ("bob", "setsecret-123")).resolved(for: plain).chap
        XCTAssertEqual(fromSettings?.user, "bob")
        XCTAssertEqual(fromSettings?.secret.value, "setsecret-123")
        // The URL names the user, the settings hold the secret.
        XCTAssertEqual(try settings(chap: ("alice", "setsecret-123")).resolved(for: withUser).chap?.secret.value, "setsecret-123")
        // The same credentials in both places are not a conflict.
        XCTAssertNoThrow(try settings(chap: ("alice", "urlsecret-123")).validate(for: withCredentials))

        assertConfigurationError(["given twice", "alice"], secrets: ["urlsecret-123", "setsecret-123"]) {
            try settings(chap: ("alice", "setsecret-123")).validate(for: withCredentials)
        }
        assertConfigurationError(["given twice"], secrets: ["urlsecret-123"]) {
            try settings(chap: ("bob", "urlsecret-123")).validate(for: withCredentials)
        }
        assertConfigurationError(["'alice'", "'bob'"]) { try settings(chap: ("bob", "setsecret-123")).validate(for: withUser) }
        assertConfigurationError(["'alice'", "without a secret"]) { try settings().validate(for: withUser) }
    }

    func testMutualCHAPRules() throws {
        let plain = try ISCSIURL(parsing: "iscsi://host/iqn.2024-01.test:t/1")
        let withCredentials = try ISCSIURL(parsing: "iscsi://alice%urlsecret-123@host/iqn.2024-01.test:t/1")
        assertConfigurationError(["needs one-way CHAP"]) {
            try settings(mutual: ("target", "mutualsecret-1")).validate(for: plain)
        }
        // One-way CHAP from the URL, mutual from the settings.
        let resolved = try settings(mutual: ("target", "mutualsecret-1")).resolved(for: withCredentials)
        XCTAssertEqual(resolved.chap?.user, "alice")
        XCTAssertEqual(resolved.mutualCHAP?.user, "target")
        // RFC 7143 §9.2.1: never one secret for both directions.
        assertConfigurationError(["RFC 7143"], secrets: ["samesecret-123"]) {
            try settings(chap: ("alice", "samesecret-123"), mutual: ("target", "samesecret-123")).validate()
        }
        assertConfigurationError(["RFC 7143"], secrets: ["urlsecret-123"]) {
            try settings(mutual: ("target", "urlsecret-123")).validate(for: withCredentials)
        }
        assertConfigurationError(["mutual CHAP user is empty"]) { try settings(chap: ("a", "secret-one-12"), mutual: ("", "secret-two-12")).validate() }
    }

    func testSecurityWarningsAreCollected() throws {
        let settings = try settings(chap: ("alice", "short"), mutual: ("target", "short2"))
        XCTAssertEqual(settings.securityWarnings.count, 2)
        XCTAssertTrue(try self.settings(chap: ("alice", "long-enough-secret")).securityWarnings.isEmpty)
    }

    // MARK: - Header digest

    func testHeaderDigestSpellings() throws {
        XCTAssertEqual(try ISCSIHeaderDigest(parsing: "none"), ISCSIHeaderDigest.none)
        XCTAssertEqual(try ISCSIHeaderDigest(parsing: "crc32c"), .crc32c)
        XCTAssertEqual(try ISCSIHeaderDigest(parsing: "prefer-none"), .preferNone)
        XCTAssertEqual(try ISCSIHeaderDigest(parsing: "prefer-crc32c"), .preferCRC32C)
        assertConfigurationError(["'CRC32C'", "none, crc32c, prefer-none, prefer-crc32c"]) { _ = try ISCSIHeaderDigest(parsing: "CRC32C") }
        XCTAssertEqual(ISCSILoginSettings(initiatorName: "iqn.2024-01.test:x").headerDigest, .preferNone, "today's default")
        // The libiscsi values, whose order of offer the login tests check on the wire.
        XCTAssertEqual(ISCSIHeaderDigest.none.libiscsiValue.rawValue, 0)
        XCTAssertEqual(ISCSIHeaderDigest.preferNone.libiscsiValue.rawValue, 1)
        XCTAssertEqual(ISCSIHeaderDigest.preferCRC32C.libiscsiValue.rawValue, 2)
        XCTAssertEqual(ISCSIHeaderDigest.crc32c.libiscsiValue.rawValue, 3)
    }

    // MARK: - Initiator names

    func testDefaultInitiatorNameIsUniquePerHost() throws {
        let idA = "0123456789abcdef0123456789abcdef"
        let idB = "fedcba9876543210fedcba9876543210"
        let a = ISCSILoginSettings.defaultInitiatorName(hostname: "Web01.Example.COM", machineID: idA)
        let b = ISCSILoginSettings.defaultInitiatorName(hostname: "Web01.Example.COM", machineID: idB)
        XCTAssertTrue(a.hasPrefix("iqn.2026-11.org.vhost-user-scsi:web01.example.com-"), a)
        XCTAssertEqual(a.count, "iqn.2026-11.org.vhost-user-scsi:web01.example.com-".count + 8)
        XCTAssertNotEqual(a, b, "clones with one host name differ by machine ID")
        XCTAssertEqual(a, ISCSILoginSettings.defaultInitiatorName(hostname: "web01.example.com", machineID: idA), "stable")
        XCTAssertFalse(a.contains("01234567"), "the machine ID itself is not exposed")
        // No usable machine ID: the host name alone.
        for id in [nil, "", "uninitialized", String(repeating: "0", count: 32), "0123"] {
            XCTAssertEqual(ISCSILoginSettings.defaultInitiatorName(hostname: "web01", machineID: id),
                           "iqn.2026-11.org.vhost-user-scsi:web01")
        }
        XCTAssertEqual(ISCSILoginSettings.defaultInitiatorName(hostname: "My_Host!", machineID: nil),
                       "iqn.2026-11.org.vhost-user-scsi:my-host")
        XCTAssertEqual(ISCSILoginSettings.defaultInitiatorName(hostname: "", machineID: nil),
                       "iqn.2026-11.org.vhost-user-scsi:localhost")
        XCTAssertEqual(ISCSILoginSettings.defaultInitiatorName(hostname: "hôte", machineID: nil),
                       "iqn.2026-11.org.vhost-user-scsi:h-te")
        let long = ISCSILoginSettings.defaultInitiatorName(hostname: String(repeating: "a", count: 300), machineID: idA)
        XCTAssertEqual(long.utf8.count, 223)
        for name in [a, b, long, ISCSILoginSettings.defaultInitiatorName(hostname: "-.-", machineID: nil)] {
            XCTAssertNoThrow(try ISCSILoginSettings.validateInitiatorName(name), name)
        }
    }

    func testThisHostsDefaultInitiatorName() throws {
        let name = ISCSILoginSettings.defaultInitiatorName()
        XCTAssertNoThrow(try ISCSILoginSettings.validateInitiatorName(name), name)
        XCTAssertEqual(name, ISCSILoginSettings.defaultInitiatorName())
        XCTAssertEqual(ISCSILoginSettings().initiatorName, name)
        if let id = try? String(contentsOfFile: "/etc/machine-id", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
           id.count == 32 {
            XCTAssertNotNil(name.range(of: "-[0-9a-f]{8}$", options: .regularExpression), name)
            XCTAssertFalse(name.contains(id.prefix(8)), "the machine ID itself is not exposed")
        }
        print("this host's default initiator name: \(name)")
    }

    func testInitiatorNameValidation() {
        for valid in ["iqn.2024-01.test:x", "iqn.2001-04.com.example", "iqn.2001-04.com.example:storage.disk2.sys1.xyz",
                      "eui.02004567A425678D", "naa.52004567BA64678D", "naa.62004567BA64678D0123456789ABCDEF"] {
            XCTAssertNoThrow(try ISCSILoginSettings.validateInitiatorName(valid), valid)
        }
        for (invalid, mention) in [("", "empty"), ("host1", "iqn., eui. or naa."), ("iqn.2024.example:x", "iqn.YYYY-MM"),
                                   ("iqn.2024-01.", "iqn.YYYY-MM"), ("iqn.2024-01.Example:x", "use lowercase"),
                                   ("iqn.2024-01.example:a b", "' '"), ("eui.0200", "16 hex"), ("naa.XYZ4567BA64678D", "hex"),
                                   ("iqn.2024-01.x:" + String(repeating: "a", count: 220), "223")] {
            assertConfigurationError([mention]) { try ISCSILoginSettings.validateInitiatorName(invalid) }
        }
        // A session refuses an invalid name before connecting.
        assertConfigurationError(["use lowercase"]) {
            try ISCSILoginSettings(initiatorName: "iqn.2024-01.Test:x").validate(for: ISCSIURL(host: "h", target: "t", lun: 1))
        }
    }

    // MARK: - Hashes

    func testSHA256AndHMACVectors() {
        func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }
        XCTAssertEqual(hex(SHA256.hash([])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex(SHA256.hash(Array("abc".utf8))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(hex(SHA256.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        // RFC 4231 test cases 1, 2 and 6 (a key longer than the block).
        XCTAssertEqual(hex(SHA256.hmac(key: [UInt8](repeating: 0x0b, count: 20), message: Array("Hi There".utf8))),
                       "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        XCTAssertEqual(hex(SHA256.hmac(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8))),
                       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        XCTAssertEqual(hex(SHA256.hmac(key: [UInt8](repeating: 0xaa, count: 131),
                                       message: Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8))),
                       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }

    /// The test helper that checks digests on the wire (RFC 3720 B.4: 32 zero bytes).
    func testCRC32CHelper() {
        XCTAssertEqual(CRC32C.checksum(ArraySlice(Array("123456789".utf8))), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum(ArraySlice([UInt8](repeating: 0, count: 32))), 0x8A91_36AA)
    }
}
