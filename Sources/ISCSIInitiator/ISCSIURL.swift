/// The address of one iSCSI logical unit:
/// `iscsi://[USER[%PASSWORD]@]HOST[:PORT]/TARGET-IQN/LUN`.
///
/// HOST is a name, an IPv4 address or an IPv6 address in brackets (`[::1]`); PORT defaults to
/// 3260. USER and PASSWORD, when present, are the CHAP credentials the initiator logs in with
/// (libiscsi's convention: `%` separates them, and nothing is percent-decoded). Query
/// parameters are not supported.
///
/// `description` never shows the password, so a URL can be logged as it is.
public struct ISCSIURL: Sendable, Equatable, CustomStringConvertible {
    public static let defaultPort = 3260
    /// SAM flat addressing reaches LUNs 0...16383.
    public static let maximumLUN: UInt16 = 16383

    public var user: String?
    public var password: String?
    /// Host name or address, without the brackets of an IPv6 address.
    public var host: String
    public var port: Int
    public var target: String
    public var lun: UInt16

    public init(user: String? = nil, password: String? = nil, host: String,
                port: Int = ISCSIURL.defaultPort, target: String, lun: UInt16) {
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.target = target
        self.lun = lun
    }

    /// Parses `string`; the error's description names the problem in one line.
    public init(parsing string: String) throws(ISCSIURLError) {
        self = try ISCSIURLParser.parse(string)
    }

    /// `HOST:PORT` as libiscsi expects it (`[v6]:PORT` for IPv6).
    public var portal: String { Self.portal(host: host, port: port) }

    /// The same for another host, e.g. the address a lookup found for this URL's name.
    static func portal(host: String, port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The URL without its password (the user name stays: it helps to debug a CHAP failure).
    public var description: String {
        let credentials = user.map { $0 + (password == nil ? "" : "%***") + "@" } ?? ""
        return "iscsi://\(credentials)\(portal)/\(target)/\(lun)"
    }
}

/// Why a string is not a usable iSCSI URL. `description` is one line and hides any password.
public struct ISCSIURLError: Error, Equatable, CustomStringConvertible {
    public enum Problem: Sendable, Equatable {
        case notISCSIScheme
        case missingHost
        case invalidPort
        case emptyUser
        case emptyPassword
        case missingTarget
        case missingLUN
        case invalidLUN
        case unexpectedPathComponent
        case queryNotSupported
    }

    public var problem: Problem
    /// The input with its password replaced by `***`.
    public var redactedURL: String

    public var description: String {
        let what: String
        switch problem {
        case .notISCSIScheme: what = "an iscsi URL must start with 'iscsi://'"
        case .missingHost: what = "missing host in iscsi URL"
        case .invalidPort: what = "port must be 1...65535 in iscsi URL"
        case .emptyUser: what = "empty CHAP user name before '@' in iscsi URL"
        case .emptyPassword: what = "empty CHAP password after '%' in iscsi URL"
        case .missingTarget: what = "missing target IQN in iscsi URL"
        case .missingLUN: what = "missing LUN in iscsi URL"
        case .invalidLUN: what = "LUN must be 0...\(ISCSIURL.maximumLUN) in iscsi URL"
        case .unexpectedPathComponent: what = "unexpected text after the LUN in iscsi URL"
        case .queryNotSupported: what = "query parameters ('?...') are not supported in iscsi URL"
        }
        return "\(what) '\(redactedURL)'"
    }
}

/// Hand-written parser: the grammar is small, and Foundation's URL would percent-decode and
/// mis-handle libiscsi's `USER%PASSWORD` credentials.
enum ISCSIURLParser {
    static let scheme = "iscsi://"

    static func parse(_ input: String) throws(ISCSIURLError) -> ISCSIURL {
        func fail(_ problem: ISCSIURLError.Problem) -> ISCSIURLError {
            ISCSIURLError(problem: problem, redactedURL: redact(input))
        }
        guard input.lowercased().hasPrefix(scheme) else { throw fail(.notISCSIScheme) }
        let rest = input.dropFirst(scheme.count)
        if rest.contains("?") { throw fail(.queryNotSupported) }

        let authority = rest.prefix { $0 != "/" }
        let path = rest.dropFirst(authority.count)

        // Credentials: everything before the last '@' of the authority.
        var user: String?
        var password: String?
        var hostPort = Substring(authority)
        if let at = authority.lastIndex(of: "@") {
            let userInfo = authority[..<at]
            hostPort = authority[authority.index(after: at)...]
            if let percent = userInfo.firstIndex(of: "%") {
                user = String(userInfo[..<percent])
                password = String(userInfo[userInfo.index(after: percent)...])
                if password == "" { throw fail(.emptyPassword) }
            } else {
                user = String(userInfo)
            }
            if user == "" { throw fail(.emptyUser) }
        }

        // Host and port; an IPv6 address is bracketed.
        var host: Substring
        var portText: Substring?
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { throw fail(.missingHost) }
            host = hostPort[hostPort.index(after: hostPort.startIndex)..<close]
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail(.invalidPort) }
                portText = after.dropFirst()
            }
        } else if let colon = hostPort.firstIndex(of: ":") {
            host = hostPort[..<colon]
            portText = hostPort[hostPort.index(after: colon)...]
        } else {
            host = hostPort
        }
        if host.isEmpty { throw fail(.missingHost) }
        var port = ISCSIURL.defaultPort
        if let portText {
            guard portText.allSatisfy(\.isASCIIDigit), portText.count <= 5,
                  let value = Int(portText), (1...65535).contains(value)
            else { throw fail(.invalidPort) }
            port = value
        }

        // Path: /TARGET/LUN
        let components = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        guard let target = components.first, !target.isEmpty else { throw fail(.missingTarget) }
        let afterTarget = components.dropFirst()
        guard let lunText = afterTarget.first, !lunText.isEmpty else { throw fail(.missingLUN) }
        if afterTarget.count > 1 { throw fail(.unexpectedPathComponent) }
        guard lunText.allSatisfy(\.isASCIIDigit), lunText.count <= 5, let lun = Int(lunText),
              lun <= Int(ISCSIURL.maximumLUN)
        else { throw fail(.invalidLUN) }

        return ISCSIURL(user: user, password: password, host: String(host), port: port,
                        target: String(target), lun: UInt16(lun))
    }

    /// `input` with the password (between '%' and the last '@' of the authority) as `***`.
    static func redact(_ input: String) -> String {
        // After "://" whatever the scheme, so a mistyped scheme does not print a password.
        var authorityStart = input.startIndex
        var cursor = input[...]
        while !cursor.isEmpty && !cursor.hasPrefix("://") { cursor = cursor.dropFirst() }
        if cursor.hasPrefix("://") { authorityStart = cursor.dropFirst(3).startIndex }
        let authorityEnd = input[authorityStart...].firstIndex(of: "/") ?? input.endIndex
        let authority = input[authorityStart..<authorityEnd]
        guard let at = authority.lastIndex(of: "@"),
              let percent = authority[..<at].firstIndex(of: "%")
        else { return input }
        return String(input[..<input.index(after: percent)]) + "***" + String(input[at...])
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
