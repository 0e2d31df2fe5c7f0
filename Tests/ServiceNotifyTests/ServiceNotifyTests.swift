import Glibc
import ServiceNotify
import XCTest

final class NotifySocketAddressTests: XCTestCase {
    func testPathsAndAbstractNames() {
        XCTAssertEqual(NotifySocketAddress("/run/systemd/notify")?.isAbstract, false)
        XCTAssertEqual(NotifySocketAddress("/run/systemd/notify")?.pathBytes, Array("/run/systemd/notify".utf8))
        XCTAssertEqual(NotifySocketAddress("@sd-notify")?.isAbstract, true)
        XCTAssertEqual(NotifySocketAddress("@sd-notify")?.pathBytes, [0] + Array("sd-notify".utf8))
        XCTAssertEqual(NotifySocketAddress("@sd-notify")?.description, "@sd-notify")
    }

    func testUnusableValuesAreRefused() {
        for value in ["", "relative/notify", "@", "vsock:2:1234", "/" + String(repeating: "a", count: 107),
                      "@" + String(repeating: "a", count: 109)] {
            XCTAssertNil(NotifySocketAddress(value), value)
        }
        // sun_path holds 108 bytes: a path and its NUL, or an abstract name without one.
        XCTAssertNotNil(NotifySocketAddress("/" + String(repeating: "a", count: 106)))
        XCTAssertNotNil(NotifySocketAddress("@" + String(repeating: "a", count: 107)))
    }
}

final class ServiceNotifyTests: XCTestCase {
    override func tearDown() {
        unsetenv("NOTIFY_SOCKET")
    }

    func testSendsOneDatagramToAPath() throws {
        let receiver = try DatagramReceiver(abstract: false)
        try ServiceNotify.send(["READY=1", "STATUS=serving"], to: XCTUnwrap(NotifySocketAddress(receiver.notifySocket)))
        XCTAssertEqual(receiver.receive(), "READY=1\nSTATUS=serving")
    }

    func testSendsToAnAbstractName() throws {
        let receiver = try DatagramReceiver(abstract: true)
        try ServiceNotify.send(["STATUS=abstract"], to: XCTUnwrap(NotifySocketAddress(receiver.notifySocket)))
        XCTAssertEqual(receiver.receive(), "STATUS=abstract")
    }

    func testUsesNotifySocketFromTheEnvironment() throws {
        let receiver = try DatagramReceiver(abstract: false)
        setenv("NOTIFY_SOCKET", receiver.notifySocket, 1)
        XCTAssertTrue(ServiceNotify.send(["STATUS=from env"]))
        XCTAssertEqual(receiver.receive(), "STATUS=from env")
        // A newline would start a new assignment: the status text is kept on one line.
        ServiceNotify.status("two\nlines")
        XCTAssertEqual(receiver.receive(), "STATUS=two lines")
    }

    /// reloading() sends RELOADING=1 with CLOCK_MONOTONIC in µs, as Type=notify-reload wants.
    func testReloadingCarriesTheMonotonicTime() throws {
        let receiver = try DatagramReceiver(abstract: false)
        setenv("NOTIFY_SOCKET", receiver.notifySocket, 1)
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let before = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
        ServiceNotify.reloading(status: "reloading")
        let lines = try XCTUnwrap(receiver.receive()).split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 3, "\(lines)")
        XCTAssertEqual(lines.first, "RELOADING=1")
        XCTAssertEqual(lines.last, "STATUS=reloading")
        let stamp = try XCTUnwrap(UInt64(lines[1].dropFirst("MONOTONIC_USEC=".count)), lines[1])
        XCTAssertTrue(lines[1].hasPrefix("MONOTONIC_USEC="))
        XCTAssertGreaterThanOrEqual(stamp, before)
        XCTAssertLessThan(stamp - before, 5_000_000, "CLOCK_MONOTONIC, in microseconds")
    }

    func testWithoutNotifySocketNothingIsSent() {
        unsetenv("NOTIFY_SOCKET")
        XCTAssertFalse(ServiceNotify.send(["READY=1"]))
    }

    func testAnAbsentListenerIsAnErrorNotACrash() throws {
        let address = try XCTUnwrap(NotifySocketAddress("/nonexistent-dir/notify"))
        XCTAssertThrowsError(try ServiceNotify.send(["READY=1"], to: address)) { error in
            XCTAssertTrue("\(error)".contains("/nonexistent-dir/notify"), "\(error)")
        }
        setenv("NOTIFY_SOCKET", "/nonexistent-dir/notify", 1)
        XCTAssertFalse(ServiceNotify.send(["READY=1"]))
        setenv("NOTIFY_SOCKET", "not-absolute", 1)
        XCTAssertFalse(ServiceNotify.send(["READY=1"]))
    }

    /// ready() sends READY=1 with the status; stopping() sends STOPPING=1 once only.
    /// (The only test calling ready(): it arranges process-wide state, STOPPING=1 at exit.)
    func testReadyThenStoppingOnce() throws {
        let receiver = try DatagramReceiver(abstract: true)
        setenv("NOTIFY_SOCKET", receiver.notifySocket, 1)
        ServiceNotify.ready(status: "serving 1 LUN")
        XCTAssertEqual(receiver.receive(), "READY=1\nSTATUS=serving 1 LUN")
        XCTAssertNil(receiver.receive(timeout: 0.2), "one datagram for ready()")
        ServiceNotify.stopping()
        XCTAssertEqual(receiver.receive(), "STOPPING=1\nSTATUS=shutting down")
        ServiceNotify.stopping()
        XCTAssertNil(receiver.receive(timeout: 0.3), "STOPPING=1 is sent once")
    }
}
