import ControlProtocol
import ISCSIInitiator

/// The checks a controller added at runtime passes before its LUNs are probed: the same as a
/// configuration file's (ConfigurationFile.loadController, `resolveLUNs`, `checkUnique`), with
/// the controllers being served in place of the file's others. Pure: tested in
/// Tests/ServerTests/ControllerAdditionTests.swift.
extension ControllerConfiguration {
    /// The controller an add-controller request describes (Docs/CONTROL.md): `name`, `socket`,
    /// optional `num_queues` and `luns` exactly as in the configuration file.
    static func addition(request: JSONValue) throws(ConfigurationError) -> ControllerConfiguration {
        guard case .object(var fields) = request else { throw ConfigurationError("a request is an object") }
        fields["command"] = nil
        guard fields["name"] != nil else { throw ConfigurationError("\"name\" is required") }
        guard fields["socket"] != nil else { throw ConfigurationError("\"socket\" (a path) is required") }
        var controller = try ConfigurationFile.loadController(.object(fields), index: 0, where: "add-controller")
        try controller.resolveLUNs()
        return controller
    }

    /// Whether this controller can be served next to `served`: name and socket unique, not the
    /// control socket's path, and every LUN's URL compatible with the login settings (CHAP).
    func checkAddition(served: [ControllerConfiguration], controlSocket: String?,
                       login: ISCSILoginSettings) throws(ConfigurationError) {
        try checkUnique(among: served, served: true)
        if socketPath == controlSocket {
            throw ConfigurationError("socket \(socketPath) is the control socket")
        }
        for lun in luns {
            do { try login.validate(for: lun.url) } catch {
                throw ConfigurationError("\(name) \(lun.address): \(error)")
            }
        }
    }
}
