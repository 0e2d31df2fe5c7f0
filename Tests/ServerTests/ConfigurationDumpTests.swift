import ControlProtocol
import Glibc
import ISCSIInitiator
import Testing
@testable import vhost_user_scsi

/// Reads a configuration file the way the server does (the file, then the checks).
private func loadFile(_ text: String) throws -> ServerConfiguration {
    let path = temporaryFile(text)
    defer { unlink(path) }
    var configuration = ServerConfiguration()
    try ConfigurationFile.load(path: path, into: &configuration)
    try configuration.finish()
    return configuration
}

/// Everything the server runs with, field by field (lunArguments are how LUNs were spelt,
/// not what they are).
private func expectSame(_ a: ServerConfiguration, _ b: ServerConfiguration, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(a.initiatorName == b.initiatorName, sourceLocation: sourceLocation)
    #expect(a.initiatorNameIsExplicit == b.initiatorNameIsExplicit, sourceLocation: sourceLocation)
    #expect(a.credentials == b.credentials, sourceLocation: sourceLocation)
    #expect(a.headerDigest == b.headerDigest, sourceLocation: sourceLocation)
    #expect(a.drainTimeoutSeconds == b.drainTimeoutSeconds, sourceLocation: sourceLocation)
    #expect(a.targetTimeoutSeconds == b.targetTimeoutSeconds, sourceLocation: sourceLocation)
    #expect(a.keepaliveSeconds == b.keepaliveSeconds, sourceLocation: sourceLocation)
    #expect(a.logLevel == b.logLevel, sourceLocation: sourceLocation)
    #expect(a.logFormat == b.logFormat, sourceLocation: sourceLocation)
    #expect(a.controlSocket == b.controlSocket, sourceLocation: sourceLocation)
    #expect(a.metricsListen == b.metricsListen, sourceLocation: sourceLocation)
    #expect(a.controllers.map(\.name) == b.controllers.map(\.name), sourceLocation: sourceLocation)
    #expect(a.controllers.map(\.socketPath) == b.controllers.map(\.socketPath), sourceLocation: sourceLocation)
    #expect(a.controllers.map(\.requestQueues) == b.controllers.map(\.requestQueues), sourceLocation: sourceLocation)
    func inAddressOrder(_ c: ServerConfiguration) -> [[ControllerConfiguration.LUN]] {
        c.controllers.map { $0.luns.sorted { LUNChanges.addressOrder($0.address, $1.address) } }
    }
    #expect(inAddressOrder(a) == inAddressOrder(b), sourceLocation: sourceLocation)
}

@Suite struct ConfigurationDumpTests {
    static let everything = """
    {
      "initiator_name": "iqn.2026-11.test:host1",
      "chap_user": "host1",
      "chap_secret_file": "/etc/vus/chap.secret",
      "mutual_chap_user": "target1",
      "mutual_chap_secret_env": "VUS_MUTUAL",
      "header_digest": "crc32c",
      "drain_timeout": 10,
      "target_timeout": 45,
      "keepalive": 0,
      "log_level": "debug",
      "log_format": "json",
      "control_socket": "/run/vus/control.sock",
      "metrics_listen": "127.0.0.1:9850",
      "controllers": [
        {"name": "vm1", "socket": "/run/vus/vm1.sock", "num_queues": 2,
         "luns": [{"address": "0:5", "url": "iscsi://10.0.0.1/iqn.2026-11.test:a/2"},
                  "iscsi://10.0.0.1/iqn.2026-11.test:a/1",
                  "1:0=iscsi://host1@[fd00::1]:3261/iqn.2026-11.test:b/7"]},
        {"name": "vm2", "socket": "/run/vus/vm2.sock", "luns": []}
      ]
    }
    """

    @Test func whatConfigWritesLoadsBackTheSame() throws {
        let original = try loadFile(Self.everything)
        let dumped = try original.fileJSON()
        let reloaded = try loadFile(dumped.serialized())
        expectSame(reloaded, original)
        // And the dump of what was read back is the same text: a fixed point.
        #expect(try reloaded.fileJSON() == dumped)
    }

    @Test func theLUNsAreAddressObjectsInAddressOrder() throws {
        let dumped = try loadFile(Self.everything).fileJSON()
        guard case .array(let controllers)? = dumped["controllers"], case .array(let luns)? = controllers[0]["luns"] else {
            Issue.record("no controllers/luns in \(dumped.serialized())")
            return
        }
        #expect(luns.map { $0["address"]?.stringValue } == ["0:0", "0:5", "1:0"])
        #expect(luns[0] == .object(["address": .string("0:0"), "url": .string("iscsi://10.0.0.1:3260/iqn.2026-11.test:a/1")]))
        #expect(controllers[0]["num_queues"] == .number(2))
        #expect(controllers[1]["num_queues"] == .number(4))
        #expect(controllers[1]["luns"] == .array([]))
    }

    @Test func secretsAreWrittenAsTheirLocation() throws {
        let dumped = try loadFile(Self.everything).fileJSON()
        #expect(dumped["chap_user"] == .string("host1"))
        #expect(dumped["chap_secret_file"] == .string("/etc/vus/chap.secret"))
        #expect(dumped["mutual_chap_secret_env"] == .string("VUS_MUTUAL"))
        #expect(dumped["chap_secret_env"] == nil)
    }

    @Test func defaultsAreLeftOutAndTheHostsInitiatorNameIsNotCloned() throws {
        let minimal = try loadFile("""
        {"controllers": [{"name": "vm1", "socket": "/run/vus/vm1.sock", "luns": ["iscsi://10.0.0.1/iqn.2026-11.test:a/1"]}]}
        """)
        let dumped = try minimal.fileJSON()
        guard case .object(let keys) = dumped else { Issue.record("not an object"); return }
        #expect(Array(keys.keys) == ["controllers"])
        #expect(!dumped.serialized().contains(ISCSILoginSettings.defaultInitiatorName()))
        // The default name given explicitly is written: the operator asked for it.
        var explicit = minimal
        try Settings.global["initiator-name"]!(&explicit, ISCSILoginSettings.defaultInitiatorName())
        #expect(try explicit.fileJSON()["initiator_name"] == .string(ISCSILoginSettings.defaultInitiatorName()))
    }

    @Test func aPasswordInAURLIsNeverPrintedTheCommandRefuses() throws {
        var configuration = try loadFile("""
        {"controllers": [{"name": "vm1", "socket": "/run/vus/vm1.sock",
                          "luns": ["iscsi://host1%Sup3rSecretText@10.0.0.1/iqn.2026-11.test:a/1"]}]}
        """)
        var message = ""
        do { _ = try configuration.fileJSON() } catch { message = error.description }
        #expect(message.contains("vm1 0:0"))
        #expect(message.contains("chap_secret_file"))
        #expect(!message.contains("Sup3rSecretText"))
        // A URL with a user and no password is fine (the secret comes from the settings).
        configuration.controllers[0].luns[0].url.password = nil
        #expect(try configuration.fileJSON().serialized().contains("iscsi://host1@10.0.0.1:3260/"))
    }
}
