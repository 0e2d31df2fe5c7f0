import ControlProtocol
import ISCSIInitiator

/// The configuration in the file's format (Docs/CONFIGURATION.md), for the control socket's
/// `config` command: what `ConfigurationFile.load` reads back into the same configuration.
/// Global settings appear only where they differ from the defaults, so the per-host default
/// initiator name is never written and a file copied to another host does not clone it.
/// Secrets never appear: CHAP is written as the secret's location (file or variable).
extension ServerConfiguration {
    func fileJSON() throws(ConfigurationError) -> JSONValue {
        var root = globalSettingsJSON()
        root["controllers"] = .array(try controllers.map { controller throws(ConfigurationError) in
            try controller.fileJSON()
        })
        return .object(root)
    }

    /// The global settings that differ from the defaults, by file key. Also what a reload
    /// compares, key by key, to name the settings that only a restart applies.
    func globalSettingsJSON() -> [String: JSONValue] {
        let defaults = ServerConfiguration()
        var keys: [String: JSONValue] = [:]
        if initiatorNameIsExplicit { keys["initiator_name"] = .string(initiatorName) }
        func secret(_ location: SecretLocation?, _ prefix: String) {
            switch location {
            case .file(let path)?: keys[prefix + "_secret_file"] = .string(path)
            case .environment(let name)?: keys[prefix + "_secret_env"] = .string(name)
            case nil: break
            }
        }
        if let user = credentials.chapUser { keys["chap_user"] = .string(user) }
        secret(credentials.chapSecret, "chap")
        if let user = credentials.mutualChapUser { keys["mutual_chap_user"] = .string(user) }
        secret(credentials.mutualChapSecret, "mutual_chap")
        if headerDigest != defaults.headerDigest { keys["header_digest"] = .string(headerDigest.rawValue) }
        if drainTimeoutSeconds != defaults.drainTimeoutSeconds { keys["drain_timeout"] = .number(Double(drainTimeoutSeconds)) }
        if targetTimeoutSeconds != defaults.targetTimeoutSeconds { keys["target_timeout"] = .number(Double(targetTimeoutSeconds)) }
        if keepaliveSeconds != defaults.keepaliveSeconds { keys["keepalive"] = .number(Double(keepaliveSeconds)) }
        if logLevel != defaults.logLevel { keys["log_level"] = .string(logLevel.name) }
        if logFormat != defaults.logFormat { keys["log_format"] = .string(logFormat.name) }
        if let controlSocket { keys["control_socket"] = .string(controlSocket) }
        if let metricsListen { keys["metrics_listen"] = .string(metricsListen.description) }
        return keys
    }
}

extension ControllerConfiguration {
    /// name, socket, num_queues and the LUNs as `{"address", "url"}` in address order.
    func fileJSON() throws(ConfigurationError) -> JSONValue {
        let ordered = luns.sorted { ($0.address.target, $0.address.lun) < ($1.address.target, $1.address.lun) }
        return .object([
            "name": .string(name),
            "socket": .string(socketPath),
            "num_queues": .number(Double(requestQueues)),
            "luns": .array(try ordered.map { lun throws(ConfigurationError) in
                .object(["address": .string(lun.address.description), "url": .string(try lun.fileURL(controller: name))])
            }),
        ])
    }
}

extension ControllerConfiguration.LUN {
    /// The URL as the file must spell it to log in the same way. A password in the URL (the
    /// URL form of CHAP, Docs/SECURITY.md) is never written: `description` would write `***`,
    /// which reads back as a wrong password, so the command refuses instead, naming the LUN.
    func fileURL(controller: String) throws(ConfigurationError) -> String {
        guard url.password == nil else {
            throw ConfigurationError("\(controller) \(address): its URL \(url) carries a CHAP password, which config never "
                                     + "prints; give the secret with chap_secret_file or chap_secret_env instead")
        }
        return url.description
    }
}
