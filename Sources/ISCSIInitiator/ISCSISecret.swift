import Glibc

/// A CHAP secret and where it came from. The secret itself never appears in `description`,
/// `debugDescription`, `dump`, a log line or an error: only its origin does ("file
/// '/etc/vhost-user-scsi/chap.secret'", "environment variable VUS_CHAP_SECRET").
///
/// Every secret, whatever its source, is checked the same way (Docs/SECURITY.md):
/// - not empty (libiscsi would silently log in without CHAP);
/// - at most 255 bytes of UTF-8 (libiscsi copies 255 bytes, tgt compares 255);
/// - no control characters (no line break, tab or NUL: it travels as a C string and lives in
///   one line of a file).
/// A secret shorter than 12 bytes, or one that begins or ends with a space, is accepted with a
/// warning in `warnings`.
public struct ISCSISecret: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// libiscsi's MAX_STRING_SIZE; tgt's ISCSI_NAME_LEN is 256 with the terminating NUL.
    public static let maximumBytes = 255
    /// RFC 7143 §9.2.1: a CHAP secret of less than 96 random bits is open to an off-line
    /// dictionary attack by anyone who sees one login (so it needs IPsec). Microsoft's
    /// initiator and several targets require 12 to 16 characters.
    public static let recommendedMinimumBytes = 12

    /// The secret; internal so that only the session, which hands it to libiscsi, sees it.
    let value: String
    /// Where the secret came from, for messages: "file '/path'", "environment variable NAME".
    public let origin: String
    /// Things the operator should know (a short secret, a group-readable file); one line each,
    /// none containing the secret. `ISCSILoginSettings.securityWarnings` collects them.
    public let warnings: [String]

    /// A secret given as text; `origin` names it in messages ("the URL", "the configuration").
    public init(_ value: String, origin: String) throws(ISCSIError) {
        try self.init(checking: value, origin: origin, warnings: [])
    }

    /// The first line of the file at `path`, without its line break ("\n" or "\r\n"); the rest of
    /// the file is ignored. The file is refused when other users may read or write it (any
    /// "other" permission bit); a file its group may access is accepted with a warning. A pipe
    /// works too (`--chap-secret-file <(pass show iscsi/chap)`).
    public init(contentsOfFile path: String) throws(ISCSIError) {
        let origin = "file '\(path)'"
        func fail(_ what: String) -> ISCSIError {
            ISCSIError(.configuration, "CHAP secret \(origin) \(what)")
        }
        guard !path.isEmpty else { throw ISCSIError(.configuration, "CHAP secret file: the path is empty") }
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else { throw fail("cannot be opened: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        // The mode of what was opened, not of what the path names now.
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw fail("cannot be examined: \(String(cString: strerror(errno)))") }
        if info.st_mode & S_IFMT == S_IFDIR { throw fail("is a directory") }
        let permissions = info.st_mode & 0o777
        let octal = "0" + String(permissions, radix: 8)
        if permissions & 0o007 != 0 {
            throw fail("may be accessed by other users (mode \(octal)); run: chmod 600 '\(path)'")
        }
        var warnings: [String] = []
        if permissions & 0o070 != 0 {
            warnings.append("CHAP secret \(origin) is accessible to its group (mode \(octal)): every member of "
                            + "that group can read the secret; chmod 600 it unless that is intended")
        }
        let firstLine = try Self.readFirstLine(fd, fail: fail)
        guard let text = String(validating: firstLine, as: UTF8.self) else { throw fail("is not UTF-8 text") }
        try self.init(checking: text, origin: origin, warnings: warnings)
    }

    /// The value of the environment variable `name`, as it is. The environment of a process
    /// is readable only by its user and root (/proc/PID/environ), unlike its command line.
    public init(environmentVariable name: String) throws(ISCSIError) {
        guard !name.isEmpty, !name.contains("="), !name.contains("\0") else {
            throw ISCSIError(.configuration, "CHAP secret: '\(name)' is not an environment variable name")
        }
        guard let raw = getenv(name) else {
            throw ISCSIError(.configuration, "CHAP secret environment variable \(name) is not set")
        }
        try self.init(checking: String(cString: raw), origin: "environment variable \(name)", warnings: [])
    }

    private init(checking value: String, origin: String, warnings: [String]) throws(ISCSIError) {
        let bytes = value.utf8.count
        func fail(_ what: String) -> ISCSIError { ISCSIError(.configuration, "CHAP secret \(origin) \(what)") }
        if bytes == 0 { throw fail("is empty") }
        if bytes > Self.maximumBytes {
            throw fail("is \(bytes) bytes long; libiscsi and tgt use at most \(Self.maximumBytes)")
        }
        if value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            throw fail("contains a control character (line break, tab or NUL)")
        }
        var warnings = warnings
        if bytes < Self.recommendedMinimumBytes {
            warnings.append("CHAP secret \(origin) is only \(bytes) bytes long: RFC 7143 §9.2.1 asks for at least 96 random "
                            + "bits (12 bytes) when the network is not encrypted, and some targets and Microsoft's "
                            + "initiator require 12-16; e.g. head -c 12 /dev/urandom | base64")
        }
        if value.first == " " || value.last == " " {
            warnings.append("CHAP secret \(origin) begins or ends with a space, which is part of the secret")
        }
        self.value = value
        self.origin = origin
        self.warnings = warnings
    }

    /// Reads up to the first line break. A secret line is short; a longer first line is cut
    /// at 4 KiB and then refused for its length.
    private static func readFirstLine(_ fd: Int32, fail: (String) -> ISCSIError) throws(ISCSIError) -> [UInt8] {
        var line: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 512)
        var sawAnything = false
        reading: while line.count <= 4096 {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw fail("cannot be read: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            sawAnything = true
            for byte in chunk[..<n] {
                if byte == UInt8(ascii: "\n") { break reading }
                line.append(byte)
            }
        }
        if !sawAnything { throw fail("is empty") }
        if line.last == UInt8(ascii: "\r") { line.removeLast() }
        if line.isEmpty { throw fail("has an empty first line (the secret must be on the first line)") }
        return line
    }

    /// Redacted: only the origin.
    public var description: String { "<CHAP secret from \(origin)>" }
    public var debugDescription: String { description }
    /// `dump` and `Mirror` see the origin only.
    public var customMirror: Mirror { Mirror(self, children: ["origin": origin], displayStyle: .struct) }

    /// Two secrets with the same text (RFC 7143 §9.2.1 forbids one secret for both directions).
    func sameText(as other: ISCSISecret) -> Bool { value == other.value }
}
