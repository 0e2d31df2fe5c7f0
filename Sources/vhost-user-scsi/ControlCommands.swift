import ControlProtocol
import ISCSIInitiator
import ServerLog
import VhostUserSCSI
import VirtioSCSI

/// The control protocol's commands (Docs/CONTROL.md): a request object in, a response object
/// out, `"ok": true` with the command's fields or `"ok": false` with a one-line `"error"`.
struct ControlCommands: Sendable {
    let registry: ControllerRegistry
    let login: LoginSettings
    /// The configuration the server started with: its global settings are the ones in force
    /// (the LUNs are read from the controllers, as they are now).
    let configuration: ServerConfiguration

    func handle(_ request: JSONValue) -> JSONValue {
        do {
            guard case .object = request, let command = request["command"]?.stringValue else {
                throw ControlError("a request is an object with a \"command\" string")
            }
            var response: [String: JSONValue]
            switch command {
            case "version":
                response = ["version": .string(Options.version)]
            case "list":
                response = ["controllers": .array(try selected(request).map(describe))]
            case "stats":
                response = ["controllers": .array(try selected(request).map(statistics))]
            case "config":
                // The running configuration in the file's format (Docs/CONFIGURATION.md).
                var running = configuration
                running.controllers = registry.all.map(\.configuration)
                do { response = ["config": try running.fileJSON()] } catch { throw ControlError(error.description) }
            case "add-controller":
                let controller = try addController(request)
                response = ["controller": describe(controller), "message": .string(controller.servingSummary)]
            case "remove-controller":
                guard let name = request["name"]?.stringValue else { throw ControlError("\"name\" (a controller) is required") }
                let force: Bool
                switch request["force"] {
                case nil: force = false
                case .bool(let value)?: force = value
                default: throw ControlError("\"force\" must be true or false")
                }
                let controller = try registry.change { try $0.remove(named: name, force: force) }
                response = ["message": .string("\(controller.name): removed; \(controller.socketPath) closed")]
            case "add-lun":
                let controller = try controller(named: request["controller"])
                let address = try address(request)
                guard let text = request["url"]?.stringValue else { throw ControlError("\"url\" is required") }
                let url: ISCSIURL
                do { url = try ISCSIURL(parsing: text) } catch { throw ControlError("url: \(error)") }
                let (unit, guest) = try controller.addLUN(address: address, url: url, login: login)
                response = ["lun": describe(unit), "guest": .string(guest.protocolName),
                            "message": .string("\(controller.name): added \(address) = \(url), "
                                               + "\(unit.probe.bytes / 1_048_576) MiB; guest \(guest.protocolName)")]
            case "remove-lun":
                let controller = try controller(named: request["controller"])
                let address = try address(request)
                let (_, guest) = try controller.removeLUN(address: address)
                response = ["guest": .string(guest.protocolName),
                            "message": .string("\(controller.name): removed \(address); guest \(guest.protocolName)")]
            case "resize-lun":
                let controller = try controller(named: request["controller"])
                let address = try address(request)
                let (before, after, changed, guest) = try controller.refreshCapacity(address: address, login: login)
                response = ["bytes_before": .number(Double(before.bytes)), "bytes": .number(Double(after.bytes)),
                            "guest": .string(changed ? guest.protocolName : "unchanged"),
                            "message": .string(changed
                                ? "\(controller.name): \(address) is now \(after.bytes) bytes (was \(before.bytes)); guest \(guest.protocolName)"
                                : "\(controller.name): \(address) is still \(after.bytes) bytes; nothing to tell the guest")]
            default:
                throw ControlError("unknown command '\(command)' (commands: \(Self.commands.joined(separator: ", ")))")
            }
            response["ok"] = .bool(true)
            return .object(response)
        } catch {
            return .object(["ok": .bool(false), "error": .string("\(error)")])
        }
    }

    static let commands = ["version", "list", "stats", "config", "add-controller", "remove-controller",
                           "add-lun", "remove-lun", "resize-lun"]

    /// Checks the request against the controllers served and adds it, all in one change: a
    /// concurrent add of the same name waits and is then refused.
    private func addController(_ request: JSONValue) throws -> Controller {
        let configuration: ControllerConfiguration
        do { configuration = try ControllerConfiguration.addition(request: request) } catch {
            throw ControlError(error.description)
        }
        return try registry.change { try $0.add(configuration, running: self.configuration, login: login) }
    }

    // MARK: - Arguments

    /// The controller named by `"controller"`, or all of them when the request names none.
    private func selected(_ request: JSONValue) throws(ControlError) -> [Controller] {
        guard let name = request["controller"] else { return registry.all }
        return [try controller(named: name)]
    }

    private func controller(named value: JSONValue?) throws(ControlError) -> Controller {
        guard let name = value?.stringValue else { throw ControlError("\"controller\" (a name) is required") }
        guard let controller = registry.controller(named: name) else {
            throw ControlError("no controller named '\(name)' (there are: \(registry.all.map(\.name).joined(separator: ", ")))")
        }
        return controller
    }

    private func address(_ request: JSONValue) throws(ControlError) -> VirtioSCSIAddress {
        guard let text = request["address"]?.stringValue else { throw ControlError("\"address\" (\"T:L\") is required") }
        do { return try ControllerConfiguration.parseAddress(text) } catch { throw ControlError(error.description) }
    }

    // MARK: - Descriptions

    private func describe(_ controller: Controller) -> JSONValue {
        // Each unit's state comes from its sessions, as the request queues last published it.
        let states = Dictionary(controller.device.refreshStatistics().luns.map { ($0.label, $0.state) }) { a, _ in a }
        return .object([
            "name": .string(controller.name),
            "socket": .string(controller.socketPath),
            "connected": .bool(controller.server.isConnected),
            "request_queues": .number(Double(controller.device.requestQueueCount)),
            "luns": .array(controller.unitList.map { describe($0, state: states[$0.address.description]) }),
        ])
    }

    /// Fresh counters (each queue publishes on request) under the controller's name.
    private func statistics(_ controller: Controller) throws -> JSONValue {
        guard case .object(var fields) = try JSONValue(encoding: controller.device.refreshStatistics()) else {
            throw ControlError("statistics did not encode as an object")
        }
        fields["name"] = .string(controller.name)
        return .object(fields)
    }

    private func describe(_ unit: Controller.Unit, state: String? = nil) -> JSONValue {
        .object([
            "address": .string(unit.address.description),
            "state": .string(state ?? "idle"),
            "url": .string(unit.url.description),
            "vendor": .string(unit.probe.vendor),
            "product": .string(unit.probe.product),
            "blocks": .number(Double(unit.probe.blocks)),
            "block_size": .number(Double(unit.probe.blockSize)),
        ])
    }
}

extension Optional where Wrapped == GuestNotification {
    /// The spelling in control responses (Docs/CONTROL.md); nil is a change whose event had
    /// not gone out when the wait ended.
    var protocolName: String {
        switch self {
        case .delivered?: return "delivered"
        case .missed?: return "missed"
        case .notNegotiated?: return "not-negotiated"
        case nil: return "pending"
        }
    }
}

struct ControlError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
