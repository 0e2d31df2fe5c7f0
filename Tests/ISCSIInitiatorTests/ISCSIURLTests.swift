import XCTest
@testable import ISCSIInitiator

final class ISCSIURLTests: XCTestCase {
    func testFullURL() throws {
        let url = try ISCSIURL(parsing: "iscsi://alice%s3cret@storage.example:3261/iqn.2024-01.example:disk/7")
        XCTAssertEqual(url.user, "alice")
        XCTAssertEqual(url.password, "s3cret")
        XCTAssertEqual(url.host, "storage.example")
        XCTAssertEqual(url.port, 3261)
        XCTAssertEqual(url.target, "iqn.2024-01.example:disk")
        XCTAssertEqual(url.lun, 7)
        XCTAssertEqual(url.portal, "storage.example:3261")
    }

    func testDefaultsAndNoCredentials() throws {
        let url = try ISCSIURL(parsing: "iscsi://127.0.0.1/iqn.x/0")
        XCTAssertNil(url.user)
        XCTAssertNil(url.password)
        XCTAssertEqual(url.port, 3260)
        XCTAssertEqual(url.lun, 0)
        XCTAssertEqual(url.description, "iscsi://127.0.0.1:3260/iqn.x/0")
    }

    func testUserWithoutPassword() throws {
        let url = try ISCSIURL(parsing: "iscsi://bob@h/iqn.x/1")
        XCTAssertEqual(url.user, "bob")
        XCTAssertNil(url.password)
        XCTAssertEqual(url.description, "iscsi://bob@h:3260/iqn.x/1")
    }

    func testIPv6() throws {
        let url = try ISCSIURL(parsing: "iscsi://[::1]:3300/iqn.x/16383")
        XCTAssertEqual(url.host, "::1")
        XCTAssertEqual(url.port, 3300)
        XCTAssertEqual(url.lun, 16383)
        XCTAssertEqual(url.portal, "[::1]:3300")
        XCTAssertEqual(try ISCSIURL(parsing: "iscsi://[fe80::2]/iqn.x/3").portal, "[fe80::2]:3260")
    }

    func testDescriptionHidesPassword() throws {
        let url = try ISCSIURL(parsing: "iscsi://alice%s3cret@h/iqn.x/1")
        XCTAssertEqual(url.description, "iscsi://alice%***@h:3260/iqn.x/1")
        XCTAssertFalse("\(url)".contains("s3cret"))
    }

    private func expect(_ text: String, _ problem: ISCSIURLError.Problem, mentions: String,
                        file: StaticString = #filePath, line: UInt = #line) {
        do {
            let url = try ISCSIURL(parsing: text)
            XCTFail("parsed \(url) from \(text)", file: file, line: line)
        } catch {
            XCTAssertEqual(error.problem, problem, file: file, line: line)
            XCTAssertTrue(error.description.contains(mentions), "\(error.description)", file: file, line: line)
            XCTAssertFalse(error.description.contains("\n"), file: file, line: line)
            XCTAssertFalse(error.description.contains("s3cret"), "password leaked: \(error.description)", file: file, line: line)
        }
    }

    func testBadURLs() {
        expect("http://h/iqn.x/1", .notISCSIScheme, mentions: "must start with 'iscsi://'")
        expect("iscsi:///iqn.x/1", .missingHost, mentions: "missing host")
        expect("iscsi://h:0/iqn.x/1", .invalidPort, mentions: "port must be 1...65535")
        expect("iscsi://h:70000/iqn.x/1", .invalidPort, mentions: "port")
        expect("iscsi://h:abc/iqn.x/1", .invalidPort, mentions: "port")
        expect("iscsi://[::1/iqn.x/1", .missingHost, mentions: "missing host")
        expect("iscsi://h", .missingTarget, mentions: "missing target IQN in iscsi URL 'iscsi://h'")
        expect("iscsi://h/", .missingTarget, mentions: "missing target")
        expect("iscsi://h/iqn.x", .missingLUN, mentions: "missing LUN in iscsi URL 'iscsi://h/iqn.x'")
        expect("iscsi://h/iqn.x/", .missingLUN, mentions: "missing LUN")
        expect("iscsi://h/iqn.x/16384", .invalidLUN, mentions: "LUN must be 0...16383")
        expect("iscsi://h/iqn.x/-1", .invalidLUN, mentions: "LUN must be 0...16383")
        expect("iscsi://h/iqn.x/one", .invalidLUN, mentions: "LUN must be")
        expect("iscsi://h/iqn.x/1/2", .unexpectedPathComponent, mentions: "after the LUN")
        expect("iscsi://h/iqn.x/1?header_digest=crc32c", .queryNotSupported, mentions: "query")
        expect("iscsi://@h/iqn.x/1", .emptyUser, mentions: "empty CHAP user")
        expect("iscsi://alice%@h/iqn.x/1", .emptyPassword, mentions: "empty CHAP password")
    }

    func testErrorsHidePassword() {
        expect("iscsi://alice%s3cret@h/iqn.x", .missingLUN, mentions: "'iscsi://alice%***@h/iqn.x'")
        expect("iscsi://alice%s3cret@h:99999/iqn.x/1", .invalidPort, mentions: "alice%***@")
        expect("http://alice%s3cret@h/iqn.x/1", .notISCSIScheme, mentions: "alice%***@")
    }

    func testISIDsAreDistinct() {
        let a = ISCSIISID.next()
        let b = ISCSIISID.next()
        XCTAssertNotEqual(a, b)
        XCTAssertEqual(a.description.count, 12)
        XCTAssertTrue(a.description.hasPrefix("80"))
    }

    func testTaskManagementResponseMapping() {
        XCTAssertEqual(ISCSISession.map(0, for: .logicalUnitReset), .functionComplete)
        XCTAssertEqual(ISCSISession.map(1, for: .abortTask(token: 0)), .functionComplete)
        XCTAssertEqual(ISCSISession.map(1, for: .abortTaskSet), .failed)
        XCTAssertEqual(ISCSISession.map(2, for: .logicalUnitReset), .incorrectLUN)
        XCTAssertEqual(ISCSISession.map(5, for: .clearACA), .functionRejected)
        XCTAssertEqual(ISCSISession.map(255, for: .clearTaskSet), .functionRejected)
        XCTAssertEqual(ISCSISession.map(6, for: .targetWarmReset), .failed)
    }
}
