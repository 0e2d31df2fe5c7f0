import Glibc
import ISCSIInitiator
import ServerLog
import VirtioSCSI

/// The command line, parsed and checked. Every problem is one line and exit code 2.
struct Options {
    struct LUN {
        var address: VirtioSCSIAddress
        var url: ISCSIURL
    }

    var socketPath = ""
    var luns: [LUN] = []
    var initiatorName = Options.defaultInitiatorName()
    var requestQueues = 4
    var logLevel = LogLevel.info
    var drainTimeoutSeconds = 30
    /// Seconds a target outage is ridden out before I/O fails (ISCSIRecoveryPolicy.outageTimeout).
    var targetTimeoutSeconds = 20
    /// Seconds between keep-alive NOP-Outs; 0 disables (ISCSIRecoveryPolicy.keepaliveInterval).
    var keepaliveSeconds = 5

    /// The iSCSI sessions' outage policy from the options (Docs/OUTAGES.md).
    var recoveryPolicy: ISCSIRecoveryPolicy {
        ISCSIRecoveryPolicy(outageTimeout: Double(targetTimeoutSeconds), keepaliveInterval: Double(keepaliveSeconds))
    }

    static let usage = """
    Usage: vhost-user-scsi --socket PATH --lun URL [--lun URL ...] [options]

    A vhost-user-scsi backend: QEMU connects to PATH (-chardev socket,path=PATH plus
    -device vhost-user-scsi-pci,chardev=...) and every SCSI command of the guest goes to
    the iSCSI logical units given with --lun.

    Options:
      --socket PATH           Unix socket to listen on. A stale socket file is replaced;
                              one another server is listening on is refused.
      --lun [T:L=]URL         An iSCSI logical unit, iscsi://[USER[%PASSWORD]@]HOST[:PORT]/IQN/LUN.
                              The k-th --lun without T:L is guest target 0, LUN k-1; with
                              T:L it is guest target T (0-255), LUN L (0-16383). Repeatable.
      --initiator-name IQN    This server's iSCSI initiator name (default: \(Options.defaultInitiatorName())).
                              Give each host its own: two servers on one LUN must not share it.
      --num-queues N          Request queues offered to the VMM, 1-64 (default 4). QEMU's
                              num_queues must not exceed it.
      --drain-timeout SECONDS How long stopping a ring waits for in-flight I/O (default 30).
      --target-timeout SECONDS
                              How long a target outage (connection lost, target restarted or
                              not answering) is ridden out: I/O waits and is re-sent after the
                              reconnect, invisible to the guest. Past it, I/O fails to the guest
                              (transport failure) until the target is back. 0-3600, default 20.
      --keepalive SECONDS     Send an iSCSI NOP-Out every SECONDS while logged in; 3 unanswered
                              ones mean the target is dead and the server reconnects. 0 disables
                              (a waiting command still detects silence after 15 s). Default 5.
      --log-level LEVEL       trace, debug, info, warning or error (default info).
      --help                  Show this text.

    Exit status: 0 after SIGINT/SIGTERM, 1 on a runtime failure (for example an unreachable
    target), 2 on bad usage.
    """

    struct UsageError: Error, CustomStringConvertible {
        var description: String
    }

    enum Parsed {
        case run(Options)
        case help
    }

    static func parse(_ arguments: [String]) throws(UsageError) -> Parsed {
        var options = Options()
        var iterator = arguments.makeIterator()
        var lunURLs: [(explicit: VirtioSCSIAddress?, url: String)] = []
        func value(_ name: String) throws(UsageError) -> String {
            guard let v = iterator.next() else { throw UsageError(description: "\(name) needs a value") }
            return v
        }
        while let argument = iterator.next() {
            // Accept --name=value as well as --name value.
            var name = argument
            var inlineValue: String?
            if argument.hasPrefix("--"), let eq = argument.firstIndex(of: "=") {
                name = String(argument[..<eq])
                inlineValue = String(argument[argument.index(after: eq)...])
            }
            func next() throws(UsageError) -> String {
                if let inlineValue { return inlineValue }
                return try value(name)
            }
            switch name {
            case "--help", "-h":
                return .help
            case "--socket":
                options.socketPath = try next()
            case "--lun":
                lunURLs.append(try parseLUNArgument(try next()))
            case "--initiator-name":
                options.initiatorName = try next()
                guard options.initiatorName.hasPrefix("iqn.") || options.initiatorName.hasPrefix("eui.")
                        || options.initiatorName.hasPrefix("naa.") else {
                    throw UsageError(description: "--initiator-name '\(options.initiatorName)' is not an iqn., eui. or naa. name")
                }
            case "--num-queues":
                let text = try next()
                guard let n = Int(text), (1...64).contains(n) else {
                    throw UsageError(description: "--num-queues must be a number from 1 to 64, not '\(text)'")
                }
                options.requestQueues = n
            case "--drain-timeout":
                let text = try next()
                guard let n = Int(text), (1...3600).contains(n) else {
                    throw UsageError(description: "--drain-timeout must be 1 to 3600 seconds, not '\(text)'")
                }
                options.drainTimeoutSeconds = n
            case "--target-timeout":
                let text = try next()
                guard let n = Int(text), (0...3600).contains(n) else {
                    throw UsageError(description: "--target-timeout must be 0 to 3600 seconds, not '\(text)'")
                }
                options.targetTimeoutSeconds = n
            case "--keepalive":
                let text = try next()
                guard let n = Int(text), (0...3600).contains(n) else {
                    throw UsageError(description: "--keepalive must be 0 (off) to 3600 seconds, not '\(text)'")
                }
                options.keepaliveSeconds = n
            case "--log-level":
                let text = try next()
                guard let level = LogLevel(name: text) else {
                    throw UsageError(description: "--log-level must be trace, debug, info, warning or error, not '\(text)'")
                }
                options.logLevel = level
            default:
                throw UsageError(description: "unknown option '\(argument)' (see --help)")
            }
        }
        guard !options.socketPath.isEmpty else { throw UsageError(description: "--socket PATH is required") }
        guard !lunURLs.isEmpty else { throw UsageError(description: "at least one --lun URL is required") }
        var nextImplicit: UInt16 = 0
        for entry in lunURLs {
            let url: ISCSIURL
            do { url = try ISCSIURL(parsing: entry.url) } catch {
                throw UsageError(description: "--lun: \(error)")
            }
            let address: VirtioSCSIAddress
            if let explicit = entry.explicit {
                address = explicit
            } else {
                address = VirtioSCSIAddress(target: 0, lun: nextImplicit)
                nextImplicit += 1
            }
            guard !options.luns.contains(where: { $0.address == address }) else {
                throw UsageError(description: "--lun: guest address \(address) is given twice")
            }
            options.luns.append(LUN(address: address, url: url))
        }
        return .run(options)
    }

    /// `T:L=URL` or `URL`.
    private static func parseLUNArgument(_ text: String) throws(UsageError) -> (explicit: VirtioSCSIAddress?, url: String) {
        guard !text.hasPrefix("iscsi://"), let eq = text.firstIndex(of: "=") else { return (nil, text) }
        let prefix = text[..<eq]
        let parts = prefix.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let target = UInt8(parts[0]), let lun = UInt16(parts[1]), lun <= 16383 else {
            throw UsageError(description: "--lun '\(prefix)=...': the guest address must be T:L with T 0-255 and L 0-16383")
        }
        return (VirtioSCSIAddress(target: target, lun: lun), String(text[text.index(after: eq)...]))
    }

    /// A per-host default, so that two hosts never present the same initiator by accident.
    static func defaultInitiatorName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        let host = gethostname(&buffer, buffer.count) == 0
            ? String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "localhost"
        let cleaned = host.lowercased().map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." ? $0 : "-" }
        return "iqn.2026-11.org.vhost-user-scsi:" + String(cleaned)
    }
}
