import ControlProtocol
import ISCSIInitiator
import Testing
@testable import vhost_user_scsi

/// The protocol's envelope and argument checks; commands that reach a device are tested end
/// to end (Scripts/hotplug-test.sh) and through the device's own tests.
@Suite struct ControlCommandsTests {
    let commands = ControlCommands(registry: ControllerRegistry(), login: LoginSettings(iscsi: ISCSILoginSettings(initiatorName: "iqn.2026-11.test:x"),
                                                                           recovery: .default),
                                   configuration: ServerConfiguration())

    @Test func answersAreOkOrAnError() {
        #expect(commands.handle(.object(["command": .string("version")]))["ok"] == .bool(true))
        #expect(commands.handle(.object(["command": .string("list")]))["controllers"] == .array([]))
        for request: JSONValue in [.array([]), .object([:]), .object(["command": .number(1)]),
                                   .object(["command": .string("nope")]),
                                   .object(["command": .string("list"), "controller": .string("vm9")])] {
            let response = commands.handle(request)
            #expect(response["ok"] == .bool(false), "\(request.serialized())")
            #expect(response["error"]?.stringValue?.isEmpty == false)
        }
    }

    /// add-controller's arguments are checked before any LUN is probed; remove-controller names
    /// a served controller.
    @Test func controllerCommandsRefuseBadArguments() {
        let url = "iscsi://127.0.0.1:3260/iqn.2026-11.test:a/1"
        let refusals: [(JSONValue, String)] = [
            (.object(["command": .string("add-controller"), "socket": .string("/run/vm3.sock")]), "\"name\" is required"),
            (.object(["command": .string("add-controller"), "name": .string("vm3")]), "\"socket\" (a path) is required"),
            (.object(["command": .string("add-controller"), "name": .string("vm 3"), "socket": .string("/s")]),
             "must be letters, digits"),
            (.object(["command": .string("add-controller"), "name": .string("vm3"), "socket": .string("/s"),
                      "luns": .array([.string("iscsi://nohost")])]), "--lun: "),
            (.object(["command": .string("add-controller"), "name": .string("vm3"), "socket": .string("/s"),
                      "luns": .array([.string("0:0=" + url), .string("0:0=" + url)])]), "0:0 is given twice"),
            (.object(["command": .string("add-controller"), "name": .string("vm3"), "socket": .string("/s"),
                      "num_queues": .number(0)]), "add-controller.num_queues: must be 1 to 64"),
            (.object(["command": .string("add-controller"), "name": .string("vm3"), "socket": .string("/s"),
                      "force": .bool(true)]), "unknown key 'force'"),
            (.object(["command": .string("remove-controller")]), "\"name\" (a controller) is required"),
            (.object(["command": .string("remove-controller"), "name": .string("vm9")]), "no controller named 'vm9'"),
            (.object(["command": .string("remove-controller"), "name": .string("vm9"), "force": .string("yes")]),
             "\"force\" must be true or false"),
        ]
        for (request, expected) in refusals {
            let response = commands.handle(request)
            #expect(response["ok"] == .bool(false), "\(request.serialized())")
            let error = response["error"]?.stringValue ?? ""
            #expect(error.contains(expected), "\(request.serialized()): \(error)")
        }
    }

    @Test func configAnswersWithTheFileFormat() {
        let response = commands.handle(.object(["command": .string("config")]))
        #expect(response["ok"] == .bool(true))
        // Defaults are left out: nothing but the (here empty) controllers.
        #expect(response["config"] == .object(["controllers": .array([])]))
    }

    @Test func jsonRoundTrips() throws {
        let value: JSONValue = .object(["a": .array([.number(1), .number(2.5), .bool(true), .null]),
                                        "b": .string("quote \" and\nnewline")])
        let text = value.serialized()
        #expect(!text.contains("\n"))
        #expect(try JSONValue.parse(Array(text.utf8)) == value)
        #expect(text.contains("\"a\":[1,2.5,true,null]"))
    }
}
