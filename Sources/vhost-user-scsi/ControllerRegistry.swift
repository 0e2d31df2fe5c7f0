import Dispatch
import ServerLog
import ServiceNotify
import Synchronization

/// The controllers the process serves now. Read by everything that names them (the control
/// commands, a reload, the metrics scrape, `config`, the service manager's status line, the
/// SIGTERM handler) and changed at runtime by add-controller / remove-controller and by
/// reloads. The data path never reads it: a controller's device and vhost-user server hold
/// everything its I/O needs.
final class ControllerRegistry: Sendable {
    private struct State {
        var controllers: [Controller]
        /// Set at SIGTERM: a controller whose add finishes after that is shut down, not served.
        var closed = false
    }

    /// The set itself: held only to copy or edit the array, never across a probe, so a scrape
    /// or a `list` is not delayed by an add.
    private let state: Mutex<State>
    /// Changes run here one at a time, each from its check to its end (an add probes every
    /// LUN, seconds): two adds cannot both take a name, a reload never sees half an add.
    private let changeQueue = DispatchQueue(label: "controller-changes")

    init(_ controllers: [Controller] = []) {
        state = Mutex(State(controllers: controllers))
    }

    /// The controllers, in the order they were added.
    var all: [Controller] { state.withLock { $0.controllers } }

    func controller(named name: String) -> Controller? {
        state.withLock { $0.controllers.first { $0.name == name } }
    }

    /// Runs `body`, the only place the set changes, after every change queued before it.
    /// Not reentrant: `body` must not call `change` again.
    func change<Result>(_ body: (Changes) throws -> Result) rethrows -> Result {
        try changeQueue.sync { try body(Changes(registry: self)) }
    }

    /// For SIGTERM: from now on no controller is added; returns the ones to shut down.
    func close() -> [Controller] {
        state.withLock { state in
            state.closed = true
            return state.controllers
        }
    }

    /// What a change may do; only `change` makes one.
    struct Changes {
        fileprivate let registry: ControllerRegistry

        var controllers: [Controller] { registry.all }

        /// Checks `configuration` against the controllers served (`checkAddition`), probes
        /// every LUN (`Controller.init`), listens on the socket and serves. `running` gives the
        /// control socket's path and the drain timeout.
        func add(_ configuration: ControllerConfiguration, running: ServerConfiguration,
                 login: LoginSettings) throws -> Controller {
            try configuration.checkAddition(served: controllers.map(\.configuration),
                                            controlSocket: running.controlSocket, login: login.iscsi)
            let controller = try Controller(configuration, login: login, drainTimeoutSeconds: running.drainTimeoutSeconds)
            do { try controller.start() } catch {
                controller.shutdown()
                throw error
            }
            let added = registry.state.withLock { state in
                guard !state.closed else { return false }
                state.controllers.append(controller)
                return true
            }
            guard added else {
                controller.shutdown()
                throw ControllerError(description: "the server is shutting down")
            }
            Log.info(controller.servingSummary)
            ServiceNotify.status(Server.status(of: registry.all))
            return controller
        }

        /// Stops serving `name` (`Controller.shutdown`: in-flight I/O finishes, the sessions log
        /// out, the socket is removed). Refused while a frontend is connected, unless `force`:
        /// then the VM loses its disks.
        @discardableResult
        func remove(named name: String, force: Bool) throws(ControllerError) -> Controller {
            guard let controller = registry.controller(named: name) else {
                throw ControllerError(description: "no controller named '\(name)' (there are: "
                                      + "\(registry.all.map(\.name).joined(separator: ", ")))")
            }
            let connected = controller.server.isConnected
            guard !connected || force else {
                throw ControllerError(description: "controller \(name) has a VM connected; stop the VM first, or force")
            }
            // Out of the set first: a scrape or `list` during the drain no longer shows it.
            registry.state.withLock { $0.controllers.removeAll { $0 === controller } }
            controller.shutdown()
            Log.info("\(name): removed" + (connected ? " (forced: its VM was disconnected)" : ""))
            ServiceNotify.status(Server.status(of: registry.all))
            return controller
        }
    }
}
