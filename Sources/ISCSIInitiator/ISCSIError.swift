/// A failure of an iSCSI session operation. `description` is one line that names the URL
/// (without its password) and what libiscsi reported, ready for a log or an exit message.
public struct ISCSIError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// No libiscsi context could be created (empty initiator name, out of memory).
        case contextCreation
        /// TCP connect or iSCSI login failed, or the LUN did not answer.
        case login
        /// A synchronous command (READ CAPACITY, INQUIRY) failed.
        case command
        /// The session was closed.
        case closed
        /// The login settings cannot be used: a secret that cannot be read or is invalid, CHAP
        /// credentials given twice, an invalid initiator name. Found before any connection.
        case configuration
    }

    public var kind: Kind
    public var description: String

    init(_ kind: Kind, _ description: String) {
        self.kind = kind
        // One line, whatever libiscsi put in its message.
        self.description = description.split(whereSeparator: \.isNewline).joined(separator: " ")
    }
}
