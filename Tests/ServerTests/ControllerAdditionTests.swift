import ControlProtocol
import ISCSIInitiator
import Testing
@testable import vhost_user_scsi

private let url1 = "iscsi://10.0.0.1/iqn.2026-11.test:a/1"
private let url2 = "iscsi://10.0.0.1/iqn.2026-11.test:a/2"

private func served(_ name: String, _ socket: String) -> ControllerConfiguration {
    var controller = ControllerConfiguration(name: name)
    controller.socketPath = socket
    return controller
}

/// add-controller's request (the configuration file's controller object) and its checks
/// against the controllers served; the probe and the socket are tested end to end
/// (Scripts/hotplug-test.sh).
@Suite struct ControllerAdditionTests {
    let login = ISCSILoginSettings(initiatorName: "iqn.2026-11.test:x")
    let running = [served("vm1", "/run/vus/vm1.sock"), served("vm2", "/run/vus/vm2.sock")]

    private func request(_ fields: [String: JSONValue]) -> JSONValue {
        .object(fields.merging(["command": .string("add-controller")]) { a, _ in a })
    }

    @Test func theFileFormsOfLUNsAndTheDefaults() throws {
        let controller = try ControllerConfiguration.addition(request: request([
            "name": .string("vm3"), "socket": .string("/run/vus/vm3.sock"),
            "luns": .array([.string(url1), .string("1:2=" + url2), .object(["address": .string("0:5"), "url": .string(url2)])]),
        ]))
        #expect(controller.name == "vm3")
        #expect(controller.socketPath == "/run/vus/vm3.sock")
        #expect(controller.requestQueues == 4)
        #expect(controller.luns.map(\.address.description) == ["0:0", "1:2", "0:5"])
        #expect(controller.luns.map(\.url.lun) == [1, 2, 2])
        try controller.checkAddition(served: running, controlSocket: "/run/vus/control.sock", login: login)

        let empty = try ControllerConfiguration.addition(request: request([
            "name": .string("vm4"), "socket": .string("/run/vus/vm4.sock"), "num_queues": .number(2),
        ]))
        #expect(empty.requestQueues == 2)
        #expect(empty.luns.isEmpty)
    }

    @Test func aTakenNameOrSocketIsRefused() throws {
        func refusal(_ name: String, _ socket: String) throws -> String {
            let controller = try ControllerConfiguration.addition(request: request(["name": .string(name), "socket": .string(socket)]))
            do {
                try controller.checkAddition(served: running, controlSocket: "/run/vus/control.sock", login: login)
                return "accepted"
            } catch {
                return error.description
            }
        }
        #expect(try refusal("vm1", "/run/vus/new.sock") == "a controller named 'vm1' is served already")
        #expect(try refusal("vm3", "/run/vus/vm2.sock") == "socket /run/vus/vm2.sock is controller vm2's already")
        #expect(try refusal("vm3", "/run/vus/control.sock") == "socket /run/vus/control.sock is the control socket")
        #expect(try refusal("vm3", "/run/vus/vm3.sock") == "accepted")
    }

    @Test func badRequestsAreOneLine() {
        let cases: [([String: JSONValue], String)] = [
            (["socket": .string("/s")], "\"name\" is required"),
            (["name": .string("vm3")], "\"socket\" (a path) is required"),
            (["name": .string("vm3"), "socket": .string("")], "must not be empty"),
            (["name": .string("vm3"), "socket": .string("/s"), "luns": .string(url1)], "luns must be an array"),
            (["name": .string("vm3"), "socket": .string("/s"), "luns": .array([.string("http://x/y/1")])], "--lun: "),
            (["name": .string("vm3"), "socket": .string("/s"), "luns": .array([.string("9:99999=" + url1)])],
             "must be T:L"),
            (["name": .string("vm3"), "socket": .string("/s"), "num_queues": .string("many")], "num_queues"),
        ]
        for (fields, expected) in cases {
            do {
                _ = try ControllerConfiguration.addition(request: request(fields))
                Issue.record("accepted \(fields)")
            } catch {
                #expect(error.description.contains(expected), "\(fields): \(error.description)")
                #expect(!error.description.contains("\n"))
            }
        }
    }

    /// A URL with CHAP credentials that contradict the server's login settings is refused
    /// before a probe, as at start.
    @Test func theLoginSettingsApply() throws {
        let withCHAP = ISCSILoginSettings(initiatorName: "iqn.2026-11.test:x",
                                          chap: ISCSICHAPCredentials(user: "alice", secret: try ISCSISecret("secret-123456", origin: "test")))
        let controller = try ControllerConfiguration.addition(request: request([
            "name": .string("vm3"), "socket": .string("/s"),
            "luns": .array([.string("iscsi://bob%other-secret-1@10.0.0.1/iqn.2026-11.test:a/1")]),
        ]))
        #expect(throws: ConfigurationError.self) {
            try controller.checkAddition(served: running, controlSocket: nil, login: withCHAP)
        }
    }
}
