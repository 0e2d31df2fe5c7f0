import ISCSIInitiator

/// The command line: global settings, then one group per controller, each opened by
/// `--socket`; `--config FILE` loads the same settings from a file first and the command line
/// overrides them. Every problem is one line and exit code 2.
enum Options {
    static let usage = """
    Usage: vhost-user-scsi [options] --socket PATH --lun URL [--lun URL ...] [--socket PATH --lun URL ...]
           vhost-user-scsi --config FILE [options]

    A vhost-user-scsi backend: QEMU connects to PATH (-chardev socket,path=PATH plus
    -device vhost-user-scsi-pci,chardev=...) and every SCSI command of the guest goes to
    the iSCSI logical units given with --lun. Each --socket starts another controller, with
    its own LUNs, served by the same process.

    Controller options (they apply to the --socket before them):
      --socket PATH           Unix socket to listen on. A stale socket file is replaced;
                              one another server is listening on is refused.
      --name NAME             The controller's name in logs, metrics and the control socket
                              (default ctrl0, ctrl1, ... in order).
      --lun [T:L=]URL         An iSCSI logical unit, iscsi://HOST[:PORT]/IQN/LUN.
                              The k-th --lun without T:L is guest target 0, LUN k-1; with
                              T:L it is guest target T (0-255), LUN L (0-16383). Repeatable.
      --num-queues N          Request queues offered to the VMM, 1-64 (default 4). QEMU's
                              num_queues must not exceed it.

    iSCSI login (Docs/SECURITY.md):
      --initiator-name IQN    This server's iSCSI initiator name (default: \(ISCSILoginSettings.defaultInitiatorName())).
                              Give each host its own: two servers on one LUN must not share it.
      --chap-user NAME        Log in with CHAP as NAME; the secret comes from
      --chap-secret-file PATH   the first line of PATH, or
      --chap-secret-env VAR     the environment variable VAR (never from the command line).
      --mutual-chap-user NAME Mutual CHAP: the target must authenticate as NAME with the secret from
      --mutual-chap-secret-file PATH | --mutual-chap-secret-env VAR
      --header-digest MODE    none, crc32c, prefer-none or prefer-crc32c (default prefer-none):
                              CRC32C digests on iSCSI headers, required or offered.

    Behaviour:
      --drain-timeout SECONDS How long stopping a ring waits for in-flight I/O (default 30).
      --target-timeout SECONDS
                              How long a target outage (connection lost, target restarted or
                              not answering) is ridden out: I/O waits and is re-sent after the
                              reconnect, invisible to the guest. Past it, I/O fails to the guest
                              (transport failure) until the target is back. 0-3600, default 20.
      --keepalive SECONDS     Send an iSCSI NOP-Out every SECONDS while logged in; 3 unanswered
                              ones mean the target is dead and the server reconnects. 0 disables
                              (a waiting command still detects silence after 15 s). Default 5.

    Operation (Docs/OPERATIONS.md):
      --config FILE           Read settings and controllers from a JSON file (Docs/CONFIGURATION.md);
                              options on the command line override its settings and add controllers.
      --check                 Check the configuration and exit: read it and the secrets, log in to
                              every LUN and print what it found; no socket is created. Exit 0 when
                              the server would start, 1 when a LUN cannot be served, 2 on a mistake.
                              SIGHUP reads it again and applies its LUN changes (see Signals).
      --control-socket PATH   Serve the JSON control protocol on PATH (vhost-user-scsi-ctl; Docs/CONTROL.md):
                              list, statistics, add and remove LUNs at runtime; `config` prints the
                              running configuration in the file's format, to persist such changes.
      --metrics-listen HOST:PORT
                              Serve Prometheus metrics on http://HOST:PORT/metrics (Docs/OBSERVABILITY.md).
      --log-level LEVEL       trace, debug, info, warning or error (default info).
      --log-format FORMAT     text or json (one object per line) on stderr (default text).
      --version               Print the version.
      --help                  Show this text.

    Signals: SIGINT/SIGTERM finish in-flight I/O, log out and exit. SIGHUP (systemctl reload)
    reads the --config file again, with the same command-line overrides, and adds and removes
    LUNs of the running controllers to match it; any other change is logged as taking effect
    at restart, and a file with a mistake is logged and changes nothing.

    Exit status: 0 after SIGINT/SIGTERM, 1 on a runtime failure (for example an unreachable
    target), 2 on bad usage or a bad configuration file.
    """

    static let version = "vhost-user-scsi 0.6.0"

    enum Parsed {
        case run(ServerConfiguration)
        /// `--check`: validate and probe, serve nothing (ConfigurationCheck).
        case check(ServerConfiguration)
        case help
        case version
    }

    static func parse(_ arguments: [String]) throws(ConfigurationError) -> Parsed {
        // Split into (name, value) pairs first, so that --config can be applied before the rest
        // wherever it appears.
        var pairs: [(name: String, value: String?)] = []
        var checkOnly = false
        var iterator = arguments.makeIterator()
        while let argument = iterator.next() {
            guard argument.hasPrefix("--") || argument == "-h" else {
                throw ConfigurationError("unexpected argument '\(argument)' (see --help)")
            }
            if argument == "--help" || argument == "-h" { return .help }
            if argument == "--version" { return .version }
            if argument == "--check" {
                checkOnly = true
                continue
            }
            var name = String(argument.dropFirst(2))
            var value: String?
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            guard name == "config" || Settings.global[name] != nil || Settings.controller[name] != nil else {
                throw ConfigurationError("unknown option '\(argument)' (see --help)")
            }
            if value == nil {
                guard let next = iterator.next() else { throw ConfigurationError("--\(name) needs a value") }
                value = next
            }
            pairs.append((name, value))
        }

        var configuration = ServerConfiguration()
        for (name, value) in pairs where name == "config" {
            try ConfigurationFile.load(path: value!, into: &configuration)
            configuration.configurationFiles.append(value!)
        }
        let fromFile = configuration.controllers.count
        for (name, value) in pairs where name != "config" {
            if let setter = Settings.global[name] {
                try setter(&configuration, value!)
            } else if let setter = Settings.controller[name] {
                // --socket opens a controller; options before the first one belong to it too.
                let current = configuration.controllers.count > fromFile ? configuration.controllers.last : nil
                if current == nil || (name == "socket" && !current!.socketPath.isEmpty) {
                    configuration.controllers.append(ControllerConfiguration(name: "ctrl\(configuration.controllers.count)"))
                }
                try setter(&configuration.controllers[configuration.controllers.count - 1], value!)
            }
        }
        try configuration.finish()
        return checkOnly ? .check(configuration) : .run(configuration)
    }
}
