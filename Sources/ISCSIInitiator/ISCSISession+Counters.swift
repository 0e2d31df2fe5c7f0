import SCSICore

extension ISCSISession {
    /// Reconnects, lost connections and commands failed for transport reasons since the
    /// session was made. Confined like every other member: read it on `queue`.
    public var sessionCounters: SCSISessionCounters {
        SCSISessionCounters(reconnects: UInt64(reconnects), connectionLosses: UInt64(outages),
                            commandFailures: commandFailures)
    }

    /// Up, riding out an outage, or past the outage timeout (ISCSISession+Recovery.swift).
    public var link: SCSISessionLink {
        if linkUp { return .up }
        return failingCommands ? .failing : .reconnecting
    }
}
