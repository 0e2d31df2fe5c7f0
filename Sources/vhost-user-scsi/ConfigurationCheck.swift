import Glibc
import ServerLog

/// `--check`: what a start would do up to the point of serving, without serving. The
/// configuration (already parsed and validated) and its secrets are read, every LUN of every
/// controller is probed, one line each on stdout, and the exit status says whether a start
/// would succeed: 0 yes, 1 a LUN cannot be served, 2 a mistake in the login settings. No socket
/// is created, so it can run beside the server it checks a new file for (before a reload or a
/// restart).
enum ConfigurationCheck {
    static func run(_ configuration: ServerConfiguration) -> Never {
        // The probes' login and logout lines are the server's business, not the check's output.
        Log.level = max(configuration.logLevel, .warning)
        Log.format = configuration.logFormat
        let login = Server.loginSettings(configuration)
        var luns = 0
        var failures = 0
        for controller in configuration.controllers {
            print("\(controller.name): socket \(controller.socketPath), \(controller.requestQueues) request queue(s), "
                  + "\(controller.luns.count) LUN(s)")
            for lun in controller.luns {
                luns += 1
                do {
                    let probe = try LUNProbe.run(lun.url, login: login)
                    print("  \(lun.address) = \(lun.url): \(probe.vendor) \(probe.product), "
                          + "\(probe.blocks) blocks of \(probe.blockSize) bytes (\(probe.bytes / 1_048_576) MiB)")
                } catch {
                    failures += 1
                    print("  \(lun.address) = \(lun.url): FAILED: \(error)")
                }
            }
        }
        print(failures == 0
              ? "configuration OK: \(configuration.controllers.count) controller(s), \(luns) LUN(s), \(login.iscsi)"
              : "configuration NOT OK: \(failures) of \(luns) LUN(s) cannot be served")
        exit(failures == 0 ? 0 : 1)
    }
}
