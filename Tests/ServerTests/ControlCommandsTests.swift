import ControlProtocol
import ISCSIInitiator
import Testing
@testable import vhost_user_scsi

/// The protocol's envelope and argument checks; commands that reach a device are tested end
/// to end (Scripts/hotplug-test.sh) and through the device's own tests.
@Suite struct ControlCommandsTests {
    let commands = ControlCommands(controllers: [], login: LoginSettings(iscsi: ISCSILoginSettings(initiatorName: "iqn.2026-11.test:x"),
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
