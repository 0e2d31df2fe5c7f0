import Testing
@testable import vhost_user_scsi

private let url1 = "iscsi://127.0.0.1:3260/iqn.2026-11.test:t/1"
private let url2 = "iscsi://127.0.0.1:3260/iqn.2026-11.test:t/2"

private func parse(_ arguments: [String]) throws -> ServerConfiguration {
    guard case .run(let configuration) = try Options.parse(arguments) else {
        throw ConfigurationError("not a run")
    }
    return configuration
}

private func error(_ arguments: [String]) -> String? {
    do { _ = try Options.parse(arguments) } catch { return error.description }
    return nil
}

@Suite struct OptionsTests {
    @Test func oneControllerAsBefore() throws {
        let c = try parse(["--socket", "/s", "--lun", url1, "--lun", "1:2=" + url2, "--num-queues", "2", "--keepalive=0"])
        #expect(c.controllers.count == 1)
        #expect(c.controllers[0].name == "ctrl0")
        #expect(c.controllers[0].requestQueues == 2)
        #expect(c.controllers[0].luns.map(\.address.description) == ["0:0", "1:2"])
        #expect(c.controllers[0].luns[1].url.lun == 2)
        #expect(c.keepaliveSeconds == 0)
    }

    @Test func optionsBeforeTheFirstSocketBelongToIt() throws {
        let c = try parse(["--lun", url1, "--num-queues", "3", "--socket", "/s"])
        #expect(c.controllers.count == 1)
        #expect(c.controllers[0].socketPath == "/s")
        #expect(c.controllers[0].requestQueues == 3)
    }

    @Test func eachSocketOpensAController() throws {
        let c = try parse(["--socket", "/a", "--name", "vm1", "--lun", url1,
                           "--socket", "/b", "--lun", url2, "--lun", url1, "--log-level", "debug"])
        #expect(c.controllers.map(\.name) == ["vm1", "ctrl1"])
        #expect(c.controllers.map(\.socketPath) == ["/a", "/b"])
        #expect(c.controllers[1].luns.map(\.address.description) == ["0:0", "0:1"])
        #expect(c.logLevel == .debug)
    }

    @Test func badUsageIsOneClearLine() {
        let cases: [([String], String)] = [
            (["--socket", "/s"], "at least one --lun"),
            (["--lun", url1], "socket path is required"),
            (["--socket", "/s", "--lun", "http://x"], "--lun"),
            (["--socket", "/a", "--lun", url1, "--socket", "/a", "--lun", url2], "given to two controllers"),
            (["--socket", "/a", "--name", "x", "--lun", url1, "--socket", "/b", "--name", "x", "--lun", url2], "given twice"),
            (["--socket", "/s", "--lun", url1, "--lun", "0:0=" + url2], "given twice"),
            (["--socket", "/s", "--lun", "0:99999=" + url1], "T:L"),
            (["--socket", "/s", "--lun", url1, "--num-queues", "0"], "--num-queues must be 1 to 64"),
            (["--socket", "/s", "--lun", url1, "--bogus"], "unknown option '--bogus'"),
            (["--socket"], "--socket needs a value"),
            (["--socket", "/s", "--lun", url1, "--chap-user", "u"], "--chap-secret-file"),
            (["--socket", "/s", "--lun", url1, "--chap-secret-env", "X"], "--chap-user"),
            (["--socket", "/s", "--lun", url1, "--chap-user", "u", "--chap-secret-env", "X", "--chap-secret-file", "/f"],
             "one way only"),
            (["--socket", "/s", "--lun", url1, "--initiator-name", "iqn.2026-11.Test:UPPER"], "--initiator-name"),
            (["--socket", "/s", "--lun", url1, "--header-digest", "md5"], "--header-digest"),
            (["--socket", "/s", "--lun", url1, "--metrics-listen", "9100"], "HOST:PORT"),
            (["--socket", "/s", "--lun", url1, "--name", "a b"], "--name"),
            (["stray"], "unexpected argument"),
        ]
        for (arguments, expected) in cases {
            let message = error(arguments)
            #expect(message?.contains(expected) == true, "\(arguments): \(message ?? "accepted")")
            #expect(message?.contains("\n") != true)
        }
    }

    @Test func aControllerMayStartEmptyWithAControlSocket() throws {
        let c = try parse(["--socket", "/s", "--control-socket", "/c"])
        #expect(c.controllers[0].luns.isEmpty)
        #expect(c.controlSocket == "/c")
    }

    @Test func helpAndVersion() throws {
        guard case .help = try Options.parse(["--socket", "/s", "--help"]) else { Issue.record("no help"); return }
        guard case .version = try Options.parse(["--version"]) else { Issue.record("no version"); return }
    }

    /// `--check` takes no value, may stand anywhere, and the configuration is still validated
    /// in full (a check of a broken configuration is the same exit 2 as a start).
    @Test func checkIsAFlagOverAFullyValidatedConfiguration() throws {
        let url = "iscsi://127.0.0.1/iqn.2026-11.test:t/1"
        guard case .check(let c) = try Options.parse(["--check", "--socket", "/s", "--lun", url]) else {
            Issue.record("no check"); return
        }
        #expect(c.controllers.map(\.socketPath) == ["/s"] && c.controllers[0].luns.count == 1)
        guard case .run = try Options.parse(["--socket", "/s", "--lun", url]) else { Issue.record("no run"); return }
        #expect(throws: ConfigurationError.self) { try Options.parse(["--socket", "/s", "--check"]) }
    }

    /// Every setting has a line in --help, so the two cannot drift apart.
    @Test func helpNamesEverySetting() {
        for name in Array(Settings.global.keys) + Array(Settings.controller.keys) + ["config", "check"] {
            #expect(Options.usage.contains("--\(name) "), "--\(name) is missing from --help")
        }
    }
}
