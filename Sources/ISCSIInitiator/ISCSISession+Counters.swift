import SCSICore

extension ISCSISession {
    /// Reconnects, lost connections, commands failed for transport reasons and failed
    /// attempts of a background first login since the session was made. Confined like every
    /// other member: read it on `queue`.
    public var sessionCounters: SCSISessionCounters {
        SCSISessionCounters(reconnects: UInt64(reconnects), connectionLosses: UInt64(outages),
                            commandFailures: commandFailures, loginFailures: firstLoginFailures)
    }

    /// Up, riding out an outage or logging in for the first time, or past the outage timeout
    /// (ISCSISession+Recovery.swift).
    public var link: SCSISessionLink {
        if linkUp { return .up }
        return failingCommands ? .failing : .reconnecting
    }
}
