import Glibc
import Testing
import UnixSockets

/// A fresh directory under $TMPDIR, removed with what is in it at the end of the test.
private func withScratchDirectory(_ body: (String) throws -> Void) throws {
    let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
    var template = Array("\(base)/vus-unixsocket-test.XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { throw SystemError(errno: errno, "mkdtemp") }
    let directory = String(cString: made)
    defer {
        for name in ["socket", "file"] { unlink(directory + "/" + name) }
        rmdir(directory)
    }
    try body(directory)
}

private func expectFailure(errno expected: Int32, message: String,
                           _ body: () throws(SystemError) -> Int32) {
    do {
        let fd = try body()
        closeOwned(fd)
        Issue.record("succeeded where \(message) was expected")
    } catch {
        #expect(error.errno == expected)
        #expect(error.description == message)
    }
}

@Suite struct UnixSocketTests {
    @Test func connectReachesAListener() throws {
        try withScratchDirectory { directory in
            let path = directory + "/socket"
            let listener = try UnixSocket.listen(path: path)
            defer { closeOwned(listener) }
            let client = try UnixSocket.connect(path: path)
            defer { closeOwned(client) }
            let accepted = accept(listener, nil, nil)
            #expect(accepted >= 0)
            closeOwned(accepted)
            #expect(fcntl(client, F_GETFD) & FD_CLOEXEC != 0)
        }
    }

    /// The control client prints this text as it is, so it must name the path and the reason.
    @Test func connectFailuresNameThePathAndTheReason() throws {
        try withScratchDirectory { directory in
            let missing = directory + "/socket"
            expectFailure(errno: ENOENT, message: "cannot connect to \(missing): No such file or directory") {
                () throws(SystemError) in try UnixSocket.connect(path: missing)
            }
            let file = directory + "/file"
            close(creat(file, 0o600))
            expectFailure(errno: ECONNREFUSED, message: "cannot connect to \(file): Connection refused") {
                () throws(SystemError) in try UnixSocket.connect(path: file)
            }
            let long = "/" + String(repeating: "a", count: 107)
            expectFailure(errno: ENAMETOOLONG, message: "socket path '\(long)' must be 1...107 bytes: File name too long") {
                () throws(SystemError) in try UnixSocket.connect(path: long)
            }
            expectFailure(errno: ENAMETOOLONG, message: "socket path '' must be 1...107 bytes: File name too long") {
                () throws(SystemError) in try UnixSocket.connect(path: "")
            }
        }
    }

    @Test func listenReplacesAStaleSocketAndRefusesALiveOne() throws {
        try withScratchDirectory { directory in
            let path = directory + "/socket"
            // Stale: the socket file stays after its listener is closed.
            closeOwned(try UnixSocket.listen(path: path))
            let listener = try UnixSocket.listen(path: path)
            defer { closeOwned(listener) }
            expectFailure(errno: EADDRINUSE, message: "another server is listening on \(path): Address already in use") {
                () throws(SystemError) in try UnixSocket.listen(path: path)
            }
        }
    }

    @Test func listenRefusesAFileThatIsNotASocket() throws {
        try withScratchDirectory { directory in
            let file = directory + "/file"
            close(creat(file, 0o600))
            expectFailure(errno: EEXIST, message: "\(file) exists and is not a socket: File exists") {
                () throws(SystemError) in try UnixSocket.listen(path: file)
            }
            var st = stat()
            #expect(lstat(file, &st) == 0 && st.st_mode & S_IFMT == S_IFREG)
        }
    }
}
