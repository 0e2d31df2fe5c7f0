import ISCSIInitiator
import MetricsExporter
import ServerLog
import VirtioSCSI

/// Everything the server runs with: process-wide settings and the controllers (one vhost-user
/// socket each, with its own LUN set). Built from the configuration file and the command line
/// by the same setters (`Settings.swift`), so both accept exactly the same names and values.
/// Format: Docs/CONFIGURATION.md.
struct ServerConfiguration {
    var initiatorName = ISCSILoginSettings.defaultInitiatorName()
    /// Whether `initiatorName` was given rather than this host's default: only a given one is
    /// written back by the `config` command (the default differs per host).
    var initiatorNameIsExplicit = false
    var credentials = CredentialSettings()
    var headerDigest = ISCSIHeaderDigest.preferNone
    var drainTimeoutSeconds = 30
    /// Seconds a target outage is ridden out before I/O fails (ISCSIRecoveryPolicy.outageTimeout).
    var targetTimeoutSeconds = 20
    /// Seconds between keep-alive NOP-Outs; 0 disables (ISCSIRecoveryPolicy.keepaliveInterval).
    var keepaliveSeconds = 5
    var logLevel = LogLevel.info
    var logFormat = LogFormat.text
    /// The JSON control socket (Docs/CONTROL.md); none when nil.
    var controlSocket: String?
    /// Where the Prometheus listener serves /metrics; none when nil.
    var metricsListen: ListenAddress?
    var controllers: [ControllerConfiguration] = []
    /// The files given with --config, in order: what SIGHUP reads again (ConfigurationReload.swift).
    var configurationFiles: [String] = []

    /// The iSCSI sessions' outage policy (Docs/OUTAGES.md).
    var recoveryPolicy: ISCSIRecoveryPolicy {
        ISCSIRecoveryPolicy(outageTimeout: Double(targetTimeoutSeconds), keepaliveInterval: Double(keepaliveSeconds))
    }
}

/// CHAP settings as given; the secrets are read when the server starts (never taken from the
/// command line itself, where `ps` shows them).
struct CredentialSettings: Equatable {
    var chapUser: String?
    var chapSecret: SecretLocation?
    var mutualChapUser: String?
    var mutualChapSecret: SecretLocation?
}

/// Where a secret is read from.
enum SecretLocation: Equatable {
    case file(String)
    case environment(String)

    func read() throws(ISCSIError) -> ISCSISecret {
        switch self {
        case .file(let path): return try ISCSISecret(contentsOfFile: path)
        case .environment(let name): return try ISCSISecret(environmentVariable: name)
        }
    }
}

extension ServerConfiguration {
    /// Reads the secrets and checks the whole login configuration (Docs/SECURITY.md).
    func loginSettings() throws(ISCSIError) -> ISCSILoginSettings {
        func chap(_ user: String?, _ secret: SecretLocation?) throws(ISCSIError) -> ISCSICHAPCredentials? {
            guard let user, let secret else { return nil }
            return ISCSICHAPCredentials(user: user, secret: try secret.read())
        }
        let settings = ISCSILoginSettings(initiatorName: initiatorName,
                                          chap: try chap(credentials.chapUser, credentials.chapSecret),
                                          mutualCHAP: try chap(credentials.mutualChapUser, credentials.mutualChapSecret),
                                          headerDigest: headerDigest)
        try settings.validate()
        for controller in controllers {
            for lun in controller.luns { try settings.validate(for: lun.url) }
        }
        return settings
    }
}

/// One virtio-scsi controller: the socket QEMU connects to and the LUNs its guest sees.
struct ControllerConfiguration {
    struct LUN: Equatable {
        var address: VirtioSCSIAddress
        var url: ISCSIURL
    }

    var name: String
    var socketPath = ""
    var requestQueues = 4
    var luns: [LUN] = []
    /// LUN arguments as given, resolved into `luns` by `resolveLUNs` once the controller is
    /// complete (an implicit address counts the LUNs without one before it).
    var lunArguments: [String] = []

    init(name: String) { self.name = name }
}

struct ConfigurationError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension ServerConfiguration {
    /// Checks what no single setter can: names and sockets unique, LUNs present.
    mutating func finish() throws(ConfigurationError) {
        guard !controllers.isEmpty else {
            throw ConfigurationError("--socket PATH (or a configuration file with controllers) is required")
        }
        for index in controllers.indices {
            let controller = controllers[index]
            try controller.checkUnique(among: controllers[..<index])
            try controllers[index].resolveLUNs()
            // A controller may start empty only when LUNs can be added at runtime.
            guard !controllers[index].luns.isEmpty || controlSocket != nil else {
                throw ConfigurationError(controllers.count == 1
                    ? "at least one --lun URL is required"
                    : "controller \(controller.name): at least one LUN is required (or a control socket to add them later)")
            }
        }
        if credentials.chapUser != nil && credentials.chapSecret == nil {
            throw ConfigurationError("--chap-user needs --chap-secret-file or --chap-secret-env")
        }
        if credentials.chapSecret != nil && credentials.chapUser == nil {
            throw ConfigurationError("a CHAP secret needs --chap-user")
        }
        if (credentials.mutualChapUser == nil) != (credentials.mutualChapSecret == nil) {
            throw ConfigurationError("mutual CHAP needs both --mutual-chap-user and --mutual-chap-secret-file/-env")
        }
        if credentials.mutualChapUser != nil && credentials.chapUser == nil {
            throw ConfigurationError("mutual CHAP needs one-way CHAP (--chap-user) too")
        }
    }
}

extension ControllerConfiguration {
    /// A socket path is given, and the name and the socket are not those of another controller
    /// of the process. `others` are the ones before this one in the configuration or, with
    /// `served`, the controllers a running server serves (add-controller, a reload).
    func checkUnique(among others: some Collection<ControllerConfiguration>,
                     served: Bool = false) throws(ConfigurationError) {
        guard !socketPath.isEmpty else {
            throw ConfigurationError("controller \(name): a socket path is required")
        }
        if others.contains(where: { $0.name == name }) {
            throw ConfigurationError(served ? "a controller named '\(name)' is served already"
                                            : "controller name '\(name)' is given twice")
        }
        if let other = others.first(where: { $0.socketPath == socketPath }) {
            throw ConfigurationError(served ? "socket \(socketPath) is controller \(other.name)'s already"
                                            : "socket \(socketPath) is given to two controllers")
        }
    }

    /// `T:L=URL` or `URL` arguments into addresses and parsed URLs.
    mutating func resolveLUNs() throws(ConfigurationError) {
        var nextImplicit: UInt16 = 0
        luns = []
        for argument in lunArguments {
            let (explicit, text) = try Self.splitLUNArgument(argument)
            let url: ISCSIURL
            do { url = try ISCSIURL(parsing: text) } catch {
                throw ConfigurationError("--lun: \(error)")
            }
            let address: VirtioSCSIAddress
            if let explicit {
                address = explicit
            } else {
                address = VirtioSCSIAddress(target: 0, lun: nextImplicit)
                nextImplicit += 1
            }
            guard !luns.contains(where: { $0.address == address }) else {
                throw ConfigurationError("--lun: guest address \(address) is given twice")
            }
            luns.append(LUN(address: address, url: url))
        }
    }

    /// `T:L=URL` or `URL`.
    static func splitLUNArgument(_ text: String) throws(ConfigurationError) -> (VirtioSCSIAddress?, String) {
        guard !text.hasPrefix("iscsi://"), let eq = text.firstIndex(of: "=") else { return (nil, text) }
        let address = try parseAddress(String(text[..<eq]))
        return (address, String(text[text.index(after: eq)...]))
    }

    /// A guest address `T:L`, T 0-255 and L 0-16383.
    static func parseAddress(_ text: String) throws(ConfigurationError) -> VirtioSCSIAddress {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let target = UInt8(parts[0]), let lun = UInt16(parts[1]), lun <= 16383 else {
            throw ConfigurationError("guest address '\(text)' must be T:L with T 0-255 and L 0-16383")
        }
        return VirtioSCSIAddress(target: target, lun: lun)
    }
}
