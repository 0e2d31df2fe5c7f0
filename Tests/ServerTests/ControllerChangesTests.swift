import Testing
@testable import vhost_user_scsi

private func controller(_ name: String, socket: String? = nil) -> ControllerConfiguration {
    var controller = ControllerConfiguration(name: name)
    controller.socketPath = socket ?? "/run/vus/\(name).sock"
    return controller
}

/// A reload's diff of the controller set, by name.
@Suite struct ControllerChangesTests {
    @Test func sameSetNothingToDo() {
        let set = [controller("vm1"), controller("vm2")]
        let changes = ControllerChanges(current: set, wanted: set.reversed())
        #expect(changes.removals.isEmpty)
        #expect(changes.additions.isEmpty)
        #expect(changes.kept.map(\.served.name) == ["vm1", "vm2"])
    }

    @Test func onlyInTheFileIsAddedOnlyServedIsRemoved() {
        let changes = ControllerChanges(current: [controller("vm1"), controller("vm2"), controller("vm3")],
                                        wanted: [controller("vm5"), controller("vm2"), controller("vm4")])
        #expect(changes.removals == ["vm1", "vm3"])
        #expect(changes.additions.map(\.name) == ["vm5", "vm4"])
        #expect(changes.kept.map(\.listed.name) == ["vm2"])
    }

    /// A changed socket keeps the controller (reported for a restart), never remove + add.
    @Test func aChangedSocketIsKept() {
        let changes = ControllerChanges(current: [controller("vm1")], wanted: [controller("vm1", socket: "/other.sock")])
        #expect(changes.removals.isEmpty && changes.additions.isEmpty)
        #expect(changes.kept.first?.listed.socketPath == "/other.sock")
    }

    @Test func summaryNamesControllersOnlyWhenOneCameOrWent() {
        var outcome = ConfigurationReloader.Outcome()
        outcome.unchanged = 2
        #expect(outcome.summary == "reload: 0 added, 0 removed, 2 unchanged, 0 not applied")
        outcome.controllersAdded = 1
        #expect(outcome.summary == "reload: 1 controller added, 0 controllers removed, 0 added, 0 removed, 2 unchanged, 0 not applied")
        outcome.controllersAdded = 0
        outcome.controllersRemoved = 2
        outcome.notApplied = 1
        outcome.failed = 1
        #expect(outcome.summary
                == "reload: 0 controllers added, 2 controllers removed, 0 added, 0 removed, 2 unchanged, 1 not applied, 1 failed")
    }
}
