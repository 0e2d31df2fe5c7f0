import Foundation
import XCTest

/// A real tgtd on 127.0.0.1, started by the tests: one target with a 64 MiB file-backed disk
/// as LUN 1 (LUN 0 is tgt's controller). Ports are chosen per process so concurrent test runs
/// and other tgtd instances do not collide.
final class TargetDaemon: @unchecked Sendable {
    static let diskBytes = 64 * 1024 * 1024
    static let blockSize = 512

    let portalPort: Int
    let controlPort: Int
    let iqn: String
    let directory: URL
    private var process: Process
    private let tgtdPath: String
    /// CHAP user and password the target requires, if any.
    private var chap: (user: String, password: String)?
    /// The account the target answers mutual CHAP with, if any.
    private var outgoing: (user: String, password: String)?
    /// The target's HeaderDigest parameter, if set (tgt's default is None).
    private var headerDigest: String?

    var url: String { "iscsi://127.0.0.1:\(portalPort)/\(iqn)/1" }

    /// Where tgtd is, or nil. Looks in PATH and in the sbin folders a non-root PATH may lack.
    static func findExecutable(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let folders = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin", "/usr/local/sbin"]
        for folder in folders {
            let candidate = folder + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Skips the calling test when tgtd is missing, or fails it when CI=true.
    static func requireTools() throws -> (tgtd: String, tgtadm: String) {
        if let tgtd = findExecutable("tgtd"), let tgtadm = findExecutable("tgtadm") {
            return (tgtd, tgtadm)
        }
        let why = "tgtd/tgtadm not found (Debian package 'tgt'); the iSCSI integration tests need a real target"
        if ProcessInfo.processInfo.environment["CI"] == "true" {
            // On CI a missing target is a broken setup, not a reason to skip.
            throw TestError(why)
        }
        throw XCTSkip(why)
    }

    /// `instance` tells apart several daemons of one test process (control port, IQN).
    init(instance: Int = 0) throws {
        let tools = try Self.requireTools()
        let pid = Int(getpid())
        controlPort = instance == 0 ? 20000 + pid % 10000 : 10000 + (pid + instance) % 10000
        portalPort = try Self.freePort()
        iqn = "iqn.2024-01.test.iscsiinitiator:pid\(pid)" + (instance == 0 ? "" : "-\(instance)")
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("iscsi-initiator-tests-\(pid)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let disk = directory.appendingPathComponent("disk.img")
        _ = FileManager.default.createFile(atPath: disk.path, contents: nil)
        let handle = try FileHandle(forWritingTo: disk)
        try handle.truncate(atOffset: UInt64(Self.diskBytes))
        try handle.close()

        tgtdPath = tools.tgtd
        tgtadmPath = tools.tgtadm
        process = Process()
        try launch()
    }

    /// Starts tgtd and configures the target on the disk file (again, after `kill`).
    func launch() throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: tgtdPath)
        process.arguments = ["-f", "--iscsi", "portal=127.0.0.1:\(portalPort)", "-C", "\(controlPort)"]
        let log = directory.appendingPathComponent("tgtd.log")
        if !FileManager.default.fileExists(atPath: log.path) {
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        }
        let logHandle = try FileHandle(forWritingTo: log)
        logHandle.seekToEndOfFile()
        process.standardOutput = logHandle
        process.standardError = logHandle
        try process.run()
        do {
            try configure()
        } catch {
            // Never leave a half-configured daemon behind.
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw error
        }
    }

    private func configure() throws {
        let disk = directory.appendingPathComponent("disk.img")
        // tgtadm fails until tgtd listens on its control socket.
        try retry("tgtd control socket") {
            try tgtadm(["--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", iqn])
        }
        try tgtadm(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", disk.path])
        if let chap { try requireCHAP(user: chap.user, password: chap.password) }
        if let outgoing { try answerMutualCHAP(user: outgoing.user, password: outgoing.password) }
        if let headerDigest { try setHeaderDigest(headerDigest) }
        try tgtadm(["--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"])
        try retry("portal 127.0.0.1:\(portalPort)") {
            guard Self.canConnect(port: portalPort) else { throw TestError("portal not listening") }
        }
    }

    /// The daemon's process id (only for signals to this daemon, which the test started).
    var pid: pid_t { process.processIdentifier }

    /// Kills tgtd at once (the kernel resets its connections); the disk file stays for `launch`.
    func kill() {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// SIGSTOP: the daemon stops answering without closing anything.
    func pause() { Glibc.kill(process.processIdentifier, SIGSTOP) }

    /// SIGCONT after `pause`.
    func resume() { Glibc.kill(process.processIdentifier, SIGCONT) }

    /// Makes the target require CHAP with this account (kept across `launch`; while the daemon
    /// is down, only for the next `launch`).
    func requireCHAP(user: String, password: String) throws {
        chap = (user, password)
        guard process.isRunning else { return }   // applied by the next `launch`
        try tgtadm(["--lld", "iscsi", "--op", "new", "--mode", "account", "--user", user, "--password", password])
        try tgtadm(["--lld", "iscsi", "--op", "bind", "--mode", "account", "--tid", "1", "--user", user])
    }

    /// Makes the target answer mutual CHAP as `user` with `password` (an outgoing account;
    /// kept across `launch`).
    func answerMutualCHAP(user: String, password: String) throws {
        outgoing = (user, password)
        guard process.isRunning else { return }
        try tgtadm(["--lld", "iscsi", "--op", "new", "--mode", "account", "--user", user, "--password", password])
        try tgtadm(["--lld", "iscsi", "--op", "bind", "--mode", "account", "--tid", "1", "--user", user, "--outgoing"])
    }

    /// Sets the target's HeaderDigest parameter ("None", "CRC32C", "None,CRC32C"...): what it
    /// accepts, in its order of preference (kept across `launch`).
    func setHeaderDigest(_ value: String) throws {
        headerDigest = value
        guard process.isRunning else { return }
        try tgtadm(["--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", "1",
                    "--name", "HeaderDigest", "--value", value])
    }

    /// The session IDs of the target's connections (`tgtadm --mode conn --op show`).
    func sessionIDs() throws -> [String] {
        let show = try tgtadm(["--lld", "iscsi", "--mode", "conn", "--op", "show", "--tid", "1"])
        return show.split(separator: "\n").compactMap { line -> String? in
            let parts = line.split(separator: ":").map { $0.trimmingCharacters(in: .whitespaces) }
            return parts.count == 2 && parts[0] == "Session" ? parts[1] : nil
        }
    }

    /// Closes every connection of the target from its side; initiators see the TCP
    /// connection end and must log in again.
    func dropConnections() throws {
        for sid in try sessionIDs() {
            try tgtadm(["--lld", "iscsi", "--mode", "conn", "--op", "delete", "--tid", "1", "--sid", sid, "--cid", "0"])
        }
    }

    private var tgtadmPath: String = ""

    func stop() {
        if process.isRunning { resume() }
        _ = try? tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", "1"])
        _ = try? tgtadm(["--mode", "sys", "--op", "delete"])
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: directory)
    }

    /// Runs tgtadm against this daemon; throws with its output when it fails.
    @discardableResult
    func tgtadm(_ arguments: [String]) throws -> String {
        let tool = Process()
        tool.executableURL = URL(fileURLWithPath: tgtadmPath)
        tool.arguments = ["-C", "\(controlPort)"] + arguments
        let pipe = Pipe()
        tool.standardOutput = pipe
        tool.standardError = pipe
        try tool.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        tool.waitUntilExit()
        guard tool.terminationStatus == 0 else {
            throw TestError("tgtadm \(arguments.joined(separator: " ")): \(output)")
        }
        return output
    }

    private func retry(_ what: String, _ body: () throws -> Void) throws {
        let deadline = Date().addingTimeInterval(10)
        while true {
            do {
                return try body()
            } catch {
                if Date() > deadline { throw TestError("timed out waiting for \(what): \(error)") }
                usleep(50_000)
            }
        }
    }

    /// A TCP port on 127.0.0.1 that nothing listens on right now.
    static func freePort() throws -> Int {
        for _ in 0..<50 {
            let port = Int.random(in: 20000...30000)
            if !canConnect(port: port) && canBind(port: port) { return port }
        }
        throw TestError("no free port found")
    }

    static func canConnect(port: Int) -> Bool {
        withSocket { fd, address in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
        }(port)
    }

    static func canBind(port: Int) -> Bool {
        withSocket { fd, address in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
        }(port)
    }

    private static func withSocket(_ body: @escaping (Int32, inout sockaddr_in) -> Bool) -> (Int) -> Bool {
        { port in
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            return body(fd, &address)
        }
    }
}

struct TestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
