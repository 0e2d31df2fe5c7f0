import Dispatch
import ServerLog
import ServiceNotify

/// SIGHUP (`systemctl reload`): reads the configuration file again, with the same command
/// line as at start (so the precedence is the same), and applies what a running server can:
/// controllers added to or removed from the file (ControllerChanges; one whose VM is connected
/// is kept) and the LUNs of the controllers it keeps serving, by controller name (LUNChanges).
/// Everything else it names in one warning line each and leaves for a restart.
/// Docs/CONFIGURATION.md, "Reloading".
final class ConfigurationReloader: Sendable {
    /// The command line the server was started with (without the program name).
    let arguments: [String]
    /// The configuration the server started with: its global settings are still the ones in
    /// force (a reload never changes them).
    let running: ServerConfiguration
    let registry: ControllerRegistry
    let login: LoginSettings
    /// Reloads run here one at a time, in order: a SIGHUP during a reload queues behind it.
    /// Not the signal queue: a probe of an unreachable target takes ~15 s, and SIGTERM must be
    /// handled meanwhile.
    private let queue = DispatchQueue(label: "reload")

    init(arguments: [String], running: ServerConfiguration, registry: ControllerRegistry, login: LoginSettings) {
        self.arguments = arguments
        self.running = running
        self.registry = registry
        self.login = login
    }

    /// Queues a reload and returns at once.
    func requestReload() {
        queue.async { self.reload() }
    }

    /// What one reload did, for the summary line.
    struct Outcome: Equatable {
        var controllersAdded = 0
        var controllersRemoved = 0
        var added = 0
        var removed = 0
        var unchanged = 0
        var notApplied = 0
        var failed = 0

        /// The LUN counts always; the controller counts in front when a controller came or went.
        var summary: String {
            func controllers(_ n: Int) -> String { n == 1 ? "1 controller" : "\(n) controllers" }
            let controllerCounts = controllersAdded > 0 || controllersRemoved > 0
                ? "\(controllers(controllersAdded)) added, \(controllers(controllersRemoved)) removed, " : ""
            return "reload: " + controllerCounts
                + "\(added) added, \(removed) removed, \(unchanged) unchanged, \(notApplied) not applied"
                + (failed > 0 ? ", \(failed) failed" : "")
        }
    }

    func reload() {
        guard !running.configurationFiles.isEmpty else {
            Log.warning("SIGHUP: no configuration file to reload (the server was started without --config)")
            return
        }
        Log.info("SIGHUP: reloading \(running.configurationFiles.joined(separator: ", "))")
        ServiceNotify.reloading(status: "reloading the configuration")
        defer { ServiceNotify.ready(status: Server.status(of: registry.all)) }
        let wanted: ServerConfiguration
        do {
            guard case .run(let parsed) = try Options.parse(arguments) else {
                Log.error("reload: the command line no longer starts a server; nothing changed")
                return
            }
            wanted = parsed
        } catch {
            Log.error("reload: \(error); nothing changed")
            return
        }
        // One change: no add-controller or remove-controller runs in between.
        let outcome = registry.change { changes in apply(wanted, changes) }
        Log.info(outcome.summary)
    }

    private func apply(_ wanted: ServerConfiguration, _ changes: ControllerRegistry.Changes) -> Outcome {
        var outcome = Outcome()
        let served = changes.controllers.map(\.configuration)
        for setting in Self.settingsOnlyARestartApplies(running: running, controllers: served, wanted: wanted) {
            Log.warning("reload: \(setting): takes effect at restart")
            outcome.notApplied += 1
        }
        let diff = ControllerChanges(current: served, wanted: wanted.controllers)
        for name in diff.removals {
            if changes.controllers.first(where: { $0.name == name })?.server.isConnected == true {
                Log.warning("controller \(name): removed from the file but a VM is connected; not removed "
                            + "(stop the VM, or remove-controller --force)")
                outcome.notApplied += 1
                continue
            }
            do {
                try changes.remove(named: name, force: false)
                outcome.controllersRemoved += 1
                Log.info("reload: controller \(name) removed")
            } catch {
                outcome.failed += 1
                Log.error("reload: cannot remove controller \(name): \(error)")
            }
        }
        for (served, listed) in diff.kept {
            guard let controller = changes.controllers.first(where: { $0.name == listed.name }) else { continue }
            apply(LUNChanges(current: served.luns, wanted: listed.luns), to: controller, &outcome)
        }
        for listed in diff.additions {
            do {
                let controller = try changes.add(listed, running: running, login: login)
                outcome.controllersAdded += 1
                Log.info("reload: controller \(controller.name) added with \(controller.unitList.count) LUN(s) at "
                         + controller.socketPath)
            } catch {
                outcome.failed += 1
                Log.error("reload: cannot add controller \(listed.name): \(error)")
            }
        }
        return outcome
    }

    private func apply(_ changes: LUNChanges, to controller: Controller, _ outcome: inout Outcome) {
        outcome.unchanged += changes.unchanged
        for address in changes.removals {
            do {
                let (_, guest) = try controller.removeLUN(address: address)
                outcome.removed += 1
                Log.info("reload: \(controller.name): removed \(address); guest \(guest.protocolName)")
            } catch {
                outcome.failed += 1
                Log.error("reload: \(controller.name): cannot remove \(address): \(error)")
            }
        }
        for lun in changes.additions {
            do {
                let (_, guest) = try controller.addLUN(address: lun.address, url: lun.url, login: login)
                outcome.added += 1
                Log.info("reload: \(controller.name): added \(lun.address) = \(lun.url); guest \(guest.protocolName)")
            } catch {
                outcome.failed += 1
                Log.error("reload: \(controller.name): cannot add \(lun.address) = \(lun.url): \(error)")
            }
        }
    }

    /// The changes in `wanted` that a running server does not apply, one phrase each: global
    /// settings (by file key) and the socket or queues of a controller it keeps serving (the
    /// VM would have to reconnect). Controllers added or removed are applied (ControllerChanges).
    static func settingsOnlyARestartApplies(running: ServerConfiguration, controllers: [ControllerConfiguration],
                                            wanted: ServerConfiguration) -> [String] {
        var changes: [String] = []
        let before = running.globalSettingsJSON()
        let after = wanted.globalSettingsJSON()
        for key in Set(before.keys).union(after.keys).sorted() where before[key] != after[key] {
            changes.append("\(key) changed")
        }
        for (controller, listed) in ControllerChanges(current: controllers, wanted: wanted.controllers).kept {
            if listed.socketPath != controller.socketPath { changes.append("controller \(controller.name): socket changed") }
            if listed.requestQueues != controller.requestQueues {
                changes.append("controller \(controller.name): num_queues changed")
            }
        }
        return changes
    }
}

extension Controller {
    /// What the controller serves now, as a configuration: the `config` command writes it and
    /// a reload compares the file with it.
    var configuration: ControllerConfiguration {
        var configuration = ControllerConfiguration(name: name)
        configuration.socketPath = socketPath
        configuration.requestQueues = device.requestQueueCount
        configuration.luns = unitList.map { ControllerConfiguration.LUN(address: $0.address, url: $0.url) }
        return configuration
    }
}
