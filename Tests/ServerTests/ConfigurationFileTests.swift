import Glibc
import MetricsExporter
import ServerLog
import Testing
@testable import vhost_user_scsi

/// Writes `text` to a new temporary file and returns its path.
func temporaryFile(_ text: String) -> String {
    var template = Array("/tmp/vus-config-XXXXXX".utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    precondition(fd >= 0)
    _ = text.withCString { write(fd, $0, strlen($0)) }
    close(fd)
    return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}

private func load(_ text: String, _ extra: [String] = []) throws -> ServerConfiguration {
    let path = temporaryFile(text)
    defer { unlink(path) }
    guard case .run(let configuration) = try Options.parse(["--config", path] + extra) else {
        throw ConfigurationError("not a run")
    }
    return configuration
}

private func loadError(_ text: String) -> String? {
    do { _ = try load(text) } catch { return "\(error)" }
    return nil
}

@Suite struct ConfigurationFileTests {
    static let example = """
    {
      "initiator_name": "iqn.2026-11.test:host1",
      "target_timeout": 30,
      "keepalive": "2",
      "control_socket": "/run/vus/control.sock",
      "metrics_listen": "127.0.0.1:9850",
      "log_format": "json",
      "controllers": [
        {"name": "vm1", "socket": "/run/vus/vm1.sock", "num_queues": 2,
         "luns": ["iscsi://10.0.0.1/iqn.2026-11.test:a/1",
                  {"address": "0:5", "url": "iscsi://10.0.0.1/iqn.2026-11.test:a/2"}]},
        {"name": "vm2", "socket": "/run/vus/vm2.sock", "luns": ["1:0=iscsi://10.0.0.2:3261/iqn.2026-11.test:b/1"]}
      ]
    }
    """

    @Test func theDocumentedExampleLoads() throws {
        let c = try load(Self.example)
        #expect(c.initiatorName == "iqn.2026-11.test:host1")
        #expect(c.targetTimeoutSeconds == 30)
        #expect(c.keepaliveSeconds == 2)
        #expect(c.controlSocket == "/run/vus/control.sock")
        #expect(c.metricsListen?.description == "127.0.0.1:9850")
        #expect(c.logFormat == .json)
        #expect(c.controllers.map(\.name) == ["vm1", "vm2"])
        #expect(c.controllers[0].requestQueues == 2)
        #expect(c.controllers[0].luns.map(\.address.description) == ["0:0", "0:5"])
        #expect(c.controllers[1].luns[0].address.description == "1:0")
        #expect(c.controllers[1].luns[0].url.port == 3261)
    }

    @Test func theCommandLineOverridesSettingsAndAddsControllers() throws {
        let c = try load(Self.example, ["--keepalive", "7", "--socket", "/s3", "--lun", "iscsi://h/iqn.2026-11.t:c/1"])
        #expect(c.keepaliveSeconds == 7)
        #expect(c.controllers.map(\.name) == ["vm1", "vm2", "ctrl2"])
    }

    @Test func mistakesNameTheirKey() {
        let cases: [(String, String)] = [
            (#"{"keepalive": 5, "bogus": 1}"#, "unknown key 'bogus'"),
            (#"{"target_timeout": "soon"}"#, "target_timeout: must be 0 to 3600"),
            (#"{"controllers": [{"socket": "/s", "lunz": []}]}"#, "controllers[0]: unknown key 'lunz'"),
            (#"{"controllers": [{"socket": "/s", "luns": [{"address": "9:x", "url": "iscsi://h/t/1"}]}]}"#,
             "controllers[0].luns[0].address"),
            (#"{"controllers": [{"socket": "/s", "luns": [7]}]}"#, "controllers[0].luns[0] must be"),
            (#"{"controllers": {"socket": "/s"}}"#, "controllers must be an array"),
            (#"{"keepalive": [1]}"#, "keepalive must be a string or a number"),
            (#"[1, 2]"#, "top level must be a JSON object"),
            (#"{"keepalive": "#, "not valid JSON"),
        ]
        for (text, expected) in cases {
            let message = loadError(text)
            #expect(message?.contains(expected) == true, "\(text): \(message ?? "accepted")")
        }
    }

    @Test func aMissingFileIsOneLine() {
        #expect(throws: ConfigurationError.self) { try Options.parse(["--config", "/nonexistent/vus.json"]) }
    }
}
