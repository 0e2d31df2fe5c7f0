import ISCSIInitiator
import MetricsExporter
import ServerLog

/// The one table of settings: `--initiator-name X` on the command line and
/// `"initiator_name": "X"` in the configuration file go through the same setter, so the two
/// can never accept different names or values. Names here are the command line's, without
/// the dashes; the file spells them with underscores.
enum Settings {
    typealias GlobalSetter = @Sendable (inout ServerConfiguration, String) throws(ConfigurationError) -> Void
    typealias ControllerSetter = @Sendable (inout ControllerConfiguration, String) throws(ConfigurationError) -> Void

    static let global: [String: GlobalSetter] = [
        "initiator-name": { c, v throws(ConfigurationError) in
            do { try ISCSILoginSettings.validateInitiatorName(v) } catch {
                throw ConfigurationError("--initiator-name: \(error)")
            }
            c.initiatorName = v
            c.initiatorNameIsExplicit = true
        },
        "chap-user": { c, v throws(ConfigurationError) in c.credentials.chapUser = try nonEmpty("chap-user", v) },
        "chap-secret-file": { c, v throws(ConfigurationError) in
            c.credentials.chapSecret = try once(c.credentials.chapSecret, .file(try nonEmpty("chap-secret-file", v)), "chap")
        },
        "chap-secret-env": { c, v throws(ConfigurationError) in
            c.credentials.chapSecret = try once(c.credentials.chapSecret, .environment(try nonEmpty("chap-secret-env", v)), "chap")
        },
        "mutual-chap-user": { c, v throws(ConfigurationError) in c.credentials.mutualChapUser = try nonEmpty("mutual-chap-user", v) },
        "mutual-chap-secret-file": { c, v throws(ConfigurationError) in
            c.credentials.mutualChapSecret = try once(c.credentials.mutualChapSecret,
                                                      .file(try nonEmpty("mutual-chap-secret-file", v)), "mutual-chap")
        },
        "mutual-chap-secret-env": { c, v throws(ConfigurationError) in
            c.credentials.mutualChapSecret = try once(c.credentials.mutualChapSecret,
                                                      .environment(try nonEmpty("mutual-chap-secret-env", v)), "mutual-chap")
        },
        "header-digest": { c, v throws(ConfigurationError) in
            do { c.headerDigest = try ISCSIHeaderDigest(parsing: v) } catch {
                throw ConfigurationError("--header-digest: \(error)")
            }
        },
        "drain-timeout": { c, v throws(ConfigurationError) in
            c.drainTimeoutSeconds = try number("drain-timeout", v, 1...3600, unit: "seconds")
        },
        "target-timeout": { c, v throws(ConfigurationError) in
            c.targetTimeoutSeconds = try number("target-timeout", v, 0...3600, unit: "seconds")
        },
        "keepalive": { c, v throws(ConfigurationError) in
            c.keepaliveSeconds = try number("keepalive", v, 0...3600, unit: "seconds (0 is off)")
        },
        "log-level": { c, v throws(ConfigurationError) in
            guard let level = LogLevel(name: v) else {
                throw ConfigurationError("--log-level must be trace, debug, info, warning or error, not '\(v)'")
            }
            c.logLevel = level
        },
        "log-format": { c, v throws(ConfigurationError) in
            guard let format = LogFormat(name: v) else {
                throw ConfigurationError("--log-format must be text or json, not '\(v)'")
            }
            c.logFormat = format
        },
        "control-socket": { c, v throws(ConfigurationError) in c.controlSocket = try nonEmpty("control-socket", v) },
        "metrics-listen": { c, v throws(ConfigurationError) in
            do { c.metricsListen = try ListenAddress(parsing: v) } catch {
                throw ConfigurationError("--metrics-listen: \(error)")
            }
        },
    ]

    static let controller: [String: ControllerSetter] = [
        "socket": { c, v throws(ConfigurationError) in c.socketPath = try nonEmpty("socket", v) },
        "name": { c, v throws(ConfigurationError) in
            guard !v.isEmpty, v.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
                throw ConfigurationError("--name '\(v)' must be letters, digits, '-', '_' or '.'")
            }
            c.name = v
        },
        "num-queues": { c, v throws(ConfigurationError) in c.requestQueues = try number("num-queues", v, 1...64) },
        "lun": { c, v throws(ConfigurationError) in c.lunArguments.append(v) },
    ]

    private static func nonEmpty(_ name: String, _ value: String) throws(ConfigurationError) -> String {
        guard !value.isEmpty else { throw ConfigurationError("--\(name) must not be empty") }
        return value
    }

    /// A secret's location may be given once: a file and a variable both would leave which one
    /// is used to the reader's guess.
    private static func once(_ current: SecretLocation?, _ new: SecretLocation,
                             _ option: String) throws(ConfigurationError) -> SecretLocation {
        guard current == nil || current == new else {
            throw ConfigurationError("--\(option)-secret-file and --\(option)-secret-env: give the secret one way only")
        }
        return new
    }

    private static func number(_ name: String, _ text: String, _ range: ClosedRange<Int>,
                               unit: String = "") throws(ConfigurationError) -> Int {
        guard let n = Int(text), range.contains(n) else {
            let what = unit.isEmpty ? "" : " \(unit)"
            throw ConfigurationError("--\(name) must be \(range.lowerBound) to \(range.upperBound)\(what), not '\(text)'")
        }
        return n
    }
}
