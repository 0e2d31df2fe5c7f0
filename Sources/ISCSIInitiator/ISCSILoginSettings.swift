internal import CLibISCSI

/// A CHAP user name with its secret. `description` shows the user and where the secret came
/// from, never the secret.
public struct ISCSICHAPCredentials: Sendable, CustomStringConvertible {
    public var user: String
    public var secret: ISCSISecret

    public init(user: String, secret: ISCSISecret) {
        self.user = user
        self.secret = secret
    }

    public var description: String { "CHAP user '\(user)' (secret from \(secret.origin))" }
}

/// The HeaderDigest values the initiator offers at login (RFC 7143 §13.1), in order of
/// preference; the target chooses. With CRC32C every PDU header carries a CRC32C that the
/// receiver checks; libiscsi offers no data digest, so data segments rely on the TCP checksum
/// alone. The raw values are the command-line spellings.
///
/// What the target does with the offer (Docs/SECURITY.md): RFC 7143 §6.2.1 has it take the
/// first offered value it allows; tgt takes CRC32C whenever both sides list it, and None
/// otherwise. libiscsi uses whatever the target answers and does not report it: even with
/// `.crc32c`, a target that answers None (tgt allowing only None) or Reject gets a session
/// without header digests.
public enum ISCSIHeaderDigest: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Offer None only: no header digests.
    case none = "none"
    /// Offer CRC32C only.
    case crc32c = "crc32c"
    /// Offer None, then CRC32C (libiscsi's and this project's default).
    case preferNone = "prefer-none"
    /// Offer CRC32C, then None.
    case preferCRC32C = "prefer-crc32c"

    /// Parses the command-line / configuration spelling; the error lists the valid ones.
    public init(parsing text: String) throws(ISCSIError) {
        guard let digest = ISCSIHeaderDigest(rawValue: text) else {
            throw ISCSIError(.configuration, "header digest '\(text)' is not one of "
                             + Self.allCases.map(\.rawValue).joined(separator: ", "))
        }
        self = digest
    }

    public var description: String { rawValue }

    var libiscsiValue: iscsi_header_digest {
        switch self {
        case .none: return ISCSI_HEADER_DIGEST_NONE
        case .crc32c: return ISCSI_HEADER_DIGEST_CRC32C
        case .preferNone: return ISCSI_HEADER_DIGEST_NONE_CRC32C
        case .preferCRC32C: return ISCSI_HEADER_DIGEST_CRC32C_NONE
        }
    }
}

/// How sessions log in: who the initiator is, how it proves it (one-way CHAP), how the target
/// must prove itself (mutual CHAP), and the header digest. Every login of a session uses it:
/// the first one and every reconnect.
///
/// CHAP in the URL (`iscsi://USER%PASSWORD@...`) still works, but `ps` shows it to every user
/// of the host: the settings are the place for secrets. Precedence (Docs/SECURITY.md):
/// - URL without credentials: `chap` is used.
/// - URL with `USER` only: `chap` must name that same user; its secret is used.
/// - URL with `USER%PASSWORD` and no `chap`: the URL's credentials are used.
/// - URL with `USER%PASSWORD` and `chap`: an error unless both are the same user and secret.
/// Mutual CHAP comes from the settings only, and needs one-way CHAP (from either place).
///
/// `description` never shows a secret.
public struct ISCSILoginSettings: Sendable, CustomStringConvertible {
    /// This initiator's iSCSI name (RFC 7143 §4.2.7); with the ISID it names the I_T nexus,
    /// and targets use it in their access lists.
    public var initiatorName: String
    /// One-way CHAP: the user name and secret the initiator answers the target's challenge with.
    public var chap: ISCSICHAPCredentials?
    /// Mutual CHAP: the name the target must answer with and the secret it must prove it knows
    /// (libiscsi's iscsi_set_target_username_pwd). Login fails when the target does not.
    public var mutualCHAP: ISCSICHAPCredentials?
    public var headerDigest: ISCSIHeaderDigest

    public init(initiatorName: String = ISCSILoginSettings.defaultInitiatorName(),
                chap: ISCSICHAPCredentials? = nil, mutualCHAP: ISCSICHAPCredentials? = nil,
                headerDigest: ISCSIHeaderDigest = .preferNone) {
        self.initiatorName = initiatorName
        self.chap = chap
        self.mutualCHAP = mutualCHAP
        self.headerDigest = headerDigest
    }

    public var description: String {
        var parts = ["initiator \(initiatorName)"]
        if let chap { parts.append(chap.description) }
        if let mutualCHAP { parts.append("mutual CHAP target user '\(mutualCHAP.user)' (secret from \(mutualCHAP.secret.origin))") }
        parts.append("header digest \(headerDigest)")
        return parts.joined(separator: ", ")
    }

    /// Warnings about the secrets (short, group-readable file), to log once at startup. Never
    /// contain a secret.
    public var securityWarnings: [String] {
        (chap?.secret.warnings ?? []) + (mutualCHAP?.secret.warnings ?? [])
    }

    /// Checks what can be checked without a URL: the initiator name, the user names, and that
    /// the two directions do not share a secret (RFC 7143 §9.2.1). Throws a one-line error.
    public func validate() throws(ISCSIError) {
        try Self.validateInitiatorName(initiatorName)
        if let chap { try Self.validateUser(chap.user, what: "CHAP user") }
        if let mutualCHAP { try Self.validateUser(mutualCHAP.user, what: "mutual CHAP user") }
        if let chap, let mutualCHAP, chap.secret.sameText(as: mutualCHAP.secret) {
            throw ISCSIError(.configuration, "the mutual CHAP secret (\(mutualCHAP.secret.origin)) is the same as the "
                             + "CHAP secret (\(chap.secret.origin)); RFC 7143 §9.2.1 requires different secrets for the "
                             + "two directions")
        }
    }

    /// `validate()`, and that the settings and the credentials in `url` can be combined
    /// (the precedence rules above). Sessions call it before connecting.
    public func validate(for url: ISCSIURL) throws(ISCSIError) {
        _ = try resolved(for: url)
    }

    /// The credentials a login to `url` uses.
    func resolved(for url: ISCSIURL) throws(ISCSIError) -> ResolvedLogin {
        try validate()
        var oneWay = chap
        if let urlUser = url.user {
            if let password = url.password {
                let fromURL = ISCSICHAPCredentials(user: urlUser, secret: try ISCSISecret(password, origin: "the URL"))
                if let chap, chap.user != urlUser || !chap.secret.sameText(as: fromURL.secret) {
                    throw ISCSIError(.configuration, "CHAP credentials for \(url) are given twice, in the URL and in the "
                                     + "login settings (\(chap)), and differ; give them in one place (the settings keep "
                                     + "the secret out of ps)")
                }
                oneWay = chap ?? fromURL
            } else if let chap {
                guard chap.user == urlUser else {
                    throw ISCSIError(.configuration, "\(url) names CHAP user '\(urlUser)' but the login settings name "
                                     + "'\(chap.user)'")
                }
            } else {
                throw ISCSIError(.configuration, "\(url) names CHAP user '\(urlUser)' without a secret: give the user "
                                 + "and a secret file or variable in the login settings (--chap-user, --chap-secret-file)")
            }
            try Self.validateUser(urlUser, what: "CHAP user in the URL")
        }
        if mutualCHAP != nil && oneWay == nil {
            throw ISCSIError(.configuration, "mutual CHAP for \(url) needs one-way CHAP too: the target proves itself "
                             + "only after the initiator has (RFC 7143 §12.1.3); give a CHAP user and secret")
        }
        if let oneWay, let mutualCHAP, oneWay.secret.sameText(as: mutualCHAP.secret) {
            throw ISCSIError(.configuration, "the mutual CHAP secret for \(url) is the same as the CHAP secret; RFC 7143 "
                             + "§9.2.1 requires different secrets for the two directions")
        }
        return ResolvedLogin(initiatorName: initiatorName, chap: oneWay, mutualCHAP: mutualCHAP,
                             headerDigest: headerDigest)
    }

    /// A CHAP user name: not empty, at most 255 bytes (libiscsi's limit), no control characters.
    static func validateUser(_ user: String, what: String) throws(ISCSIError) {
        if user.isEmpty { throw ISCSIError(.configuration, "\(what) is empty") }
        if user.utf8.count > ISCSISecret.maximumBytes {
            throw ISCSIError(.configuration, "\(what) is \(user.utf8.count) bytes long; libiscsi uses at most "
                             + "\(ISCSISecret.maximumBytes)")
        }
        if user.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            throw ISCSIError(.configuration, "\(what) contains a control character")
        }
    }
}

/// What one login uses: the settings with the URL's credentials folded in.
struct ResolvedLogin: Sendable {
    var initiatorName: String
    var chap: ISCSICHAPCredentials?
    var mutualCHAP: ISCSICHAPCredentials?
    var headerDigest: ISCSIHeaderDigest

    /// For the "logged in" line: the names, never the secrets.
    var summary: String {
        var text = "as \(initiatorName)"
        if let chap { text += ", CHAP user '\(chap.user)'" }
        if let mutualCHAP { text += ", mutual CHAP (target '\(mutualCHAP.user)')" }
        if headerDigest != .preferNone { text += ", header digest \(headerDigest)" }
        return text
    }
}
