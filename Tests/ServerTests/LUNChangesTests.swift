import ISCSIInitiator
import Testing
import VirtioSCSI
@testable import vhost_user_scsi

private func lun(_ address: String, _ n: UInt16, host: String = "10.0.0.1") -> ControllerConfiguration.LUN {
    ControllerConfiguration.LUN(address: try! ControllerConfiguration.parseAddress(address),
                                url: ISCSIURL(host: host, target: "iqn.2026-11.test:a", lun: n))
}

@Suite struct LUNChangesTests {
    @Test func nothingChanged() {
        let luns = [lun("0:0", 1), lun("0:1", 2)]
        let changes = LUNChanges(current: luns, wanted: luns.reversed())
        #expect(changes.isEmpty)
        #expect(changes.unchanged == 2)
    }

    @Test func newAddressesAreAddedAndMissingOnesRemoved() {
        let changes = LUNChanges(current: [lun("0:0", 1), lun("0:3", 3)],
                                 wanted: [lun("1:0", 5), lun("0:0", 1), lun("0:2", 4)])
        #expect(changes.removals.map(\.description) == ["0:3"])
        #expect(changes.additions == [lun("0:2", 4), lun("1:0", 5)])
        #expect(changes.unchanged == 1)
    }

    @Test func aChangedURLIsRemovedThenAdded() {
        let changes = LUNChanges(current: [lun("0:0", 1), lun("0:1", 2)],
                                 wanted: [lun("0:0", 1, host: "10.0.0.2"), lun("0:1", 2)])
        #expect(changes.removals.map(\.description) == ["0:0"])
        #expect(changes.additions == [lun("0:0", 1, host: "10.0.0.2")])
        #expect(changes.unchanged == 1)
    }

    @Test func anEmptyFileListRemovesEverything() {
        let changes = LUNChanges(current: [lun("0:1", 2), lun("0:0", 1)], wanted: [])
        #expect(changes.removals.map(\.description) == ["0:0", "0:1"])
        #expect(changes.additions.isEmpty)
        #expect(changes.unchanged == 0)
    }

    @Test func whatOnlyARestartApplies() throws {
        var running = ServerConfiguration()
        running.controlSocket = "/run/vus/control.sock"
        var vm1 = ControllerConfiguration(name: "vm1")
        vm1.socketPath = "/run/vus/vm1.sock"
        vm1.luns = [lun("0:0", 1)]
        var vm2 = ControllerConfiguration(name: "vm2")
        vm2.socketPath = "/run/vus/vm2.sock"
        running.controllers = [vm1, vm2]

        var wanted = running
        #expect(ConfigurationReloader.settingsOnlyARestartApplies(running: running, controllers: running.controllers,
                                                                  wanted: wanted).isEmpty)
        // LUN changes are applied, not reported here.
        wanted.controllers[0].luns = [lun("0:1", 2)]
        #expect(ConfigurationReloader.settingsOnlyARestartApplies(running: running, controllers: running.controllers,
                                                                  wanted: wanted).isEmpty)
        wanted.keepaliveSeconds = 9
        wanted.controlSocket = nil
        wanted.controllers[0].socketPath = "/run/vus/other.sock"
        wanted.controllers[0].requestQueues = 2
        var vm3 = ControllerConfiguration(name: "vm3")
        vm3.socketPath = "/run/vus/vm3.sock"
        wanted.controllers[1] = vm3
        #expect(ConfigurationReloader.settingsOnlyARestartApplies(running: running, controllers: running.controllers,
                                                                  wanted: wanted)
                == ["control_socket changed", "keepalive changed", "controller vm1: socket changed",
                    "controller vm1: num_queues changed"])
    }
}
