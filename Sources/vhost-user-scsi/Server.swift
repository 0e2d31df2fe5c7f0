import Dispatch
import Glibc
import ISCSIInitiator
import MetricsExporter
import ServerLog
import ServerMetrics
import ServiceNotify

/// Wiring: options → controllers (each probes its LUNs) → vhost-user sockets → wait for a signal.
enum Server {
    static func main() -> Never {
        let configuration: ServerConfiguration
        // Kept: a reload (SIGHUP) parses the same arguments again, so precedence is the same.
        let arguments = Array(CommandLine.arguments.dropFirst())
        do {
            switch try Options.parse(arguments) {
            case .help:
                print(Options.usage)
                exit(0)
            case .version:
                print(Options.version)
                exit(0)
            case .run(let parsed):
                configuration = parsed
            case .check(let parsed):
                ConfigurationCheck.run(parsed)
            }
        } catch {
            fail("\(error)", status: 2)
        }
        Log.level = configuration.logLevel
        Log.format = configuration.logFormat
        // A SIGHUP while the LUNs are probed would end the process (the default action); the
        // reload handler comes once the controllers exist. Until then there is nothing to reload.
        signal(SIGHUP, SIG_IGN)
        let login = loginSettings(configuration)
        var controllers: [Controller] = []
        var registry = ControllerRegistry()
        var control: ControlServer?
        var exporter: PrometheusExporter?
        do {
            for controllerConfiguration in configuration.controllers {
                controllers.append(try Controller(controllerConfiguration, login: login,
                                                  drainTimeoutSeconds: configuration.drainTimeoutSeconds))
            }
            for controller in controllers {
                try controller.start()
                Log.info(controller.servingSummary)
            }
            registry = ControllerRegistry(controllers)
            if let address = configuration.metricsListen {
                // Asked at each scrape: a controller added at runtime is scraped from then on.
                exporter = try PrometheusExporter.start(host: address.host, port: address.port) { [registry] in
                    registry.all.map { controller in
                        MetricsSource(controller: controller.name) { controller.device.statistics() }
                    }
                }
            }
            if let path = configuration.controlSocket {
                let commands = ControlCommands(registry: registry, login: login, configuration: configuration)
                control = ControlServer(path: path) { commands.handle($0) }
                try control?.start()
            }
        } catch {
            for controller in controllers { controller.shutdown() }
            control?.shutdown()
            exporter?.stop()
            fail("\(error)", status: 1)
        }
        Log.info("\(login.iscsi); target outages ridden out for \(configuration.targetTimeoutSeconds) s, "
                 + "keep-alive " + (configuration.keepaliveSeconds == 0 ? "off" : "every \(configuration.keepaliveSeconds) s"))
        let reloader = ConfigurationReloader(arguments: arguments, running: configuration, registry: registry,
                                             login: login)
        installSignalHandlers(registry: registry, control: control, reloader: reloader)
        // After the handlers: a systemd unit of Type=notify is "active" from here on.
        ServiceNotify.ready(status: status(of: registry.all))
        dispatchMain()
    }

    /// The service manager's STATUS= line (systemctl status).
    static func status(of controllers: [Controller]) -> String {
        "serving \(controllers.count) controller(s): "
            + controllers.map { "\($0.name) (\($0.unitList.count) LUN(s))" }.joined(separator: ", ")
    }

    /// The login settings with their secrets read, or exit status 2 (a start and `--check` alike).
    /// Also ignores SIGPIPE: libiscsi writes to sockets whose peer may be gone.
    static func loginSettings(_ configuration: ServerConfiguration) -> LoginSettings {
        signal(SIGPIPE, SIG_IGN)
        let login: LoginSettings
        do {
            login = LoginSettings(iscsi: try configuration.loginSettings(), recovery: configuration.recoveryPolicy)
        } catch {
            fail("\(error)", status: 2)
        }
        for warning in login.iscsi.securityWarnings { Log.warning(warning) }
        return login
    }

    /// One line on stderr and the exit status; never a stack trace.
    static func fail(_ message: String, status: Int32) -> Never {
        let line = "vhost-user-scsi: \(message)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
        exit(status)
    }

    private static func installSignalHandlers(registry: ControllerRegistry, control: ControlServer?,
                                              reloader: ConfigurationReloader) {
        let queue = DispatchQueue(label: "signals")
        // SIGHUP only queues the reload: the signal queue stays free for SIGTERM. (SIGHUP is
        // ignored since the start, so the Dispatch source alone sees it.)
        let hangup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: queue)
        hangup.setEventHandler { @Sendable in reloader.requestReload() }
        hangup.resume()
        signalSources.append(hangup)
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { @Sendable in
                ServiceNotify.stopping()
                Log.info("signal \(sig): finishing in-flight I/O and shutting down")
                control?.shutdown()
                // The controllers of this moment (one added meanwhile is shut down as its add
                // ends), all at once: each waits for its own frontend's in-flight I/O.
                let controllers = registry.close()
                DispatchQueue.concurrentPerform(iterations: controllers.count) { controllers[$0].shutdown() }
                // Closing a session does not wait for its logout; targets that answer get it now.
                ISCSISession.waitForBackgroundLogouts(timeout: 6)
                Log.info("shut down cleanly")
                exit(0)
            }
            source.resume()
            signalSources.append(source)
        }
    }

    nonisolated(unsafe) private static var signalSources: [DispatchSourceSignal] = []
}
