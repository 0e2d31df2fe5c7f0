import Dispatch
import ISCSIInitiator
import ServerLog
import Synchronization
import VhostUserBackend
import VhostUserSCSI
import VirtioSCSI

/// One virtio-scsi controller: a vhost-user socket, the device behind it and the iSCSI URLs
/// of its logical units. A process serves several, each independent of the others.
final class Controller: Sendable {
    struct Unit: Sendable {
        var address: VirtioSCSIAddress
        var url: ISCSIURL
        var probe: LUNProbe
    }

    let name: String
    let socketPath: String
    let device: VirtioSCSIDevice
    let server: VhostUserServer
    /// The units by backend id (the id the device gives a logical unit; never reused).
    private let units: UnitTable

    /// Probes every LUN (a wrong URL fails here, before QEMU connects) and builds the device.
    init(_ configuration: ControllerConfiguration, login: LoginSettings, drainTimeoutSeconds: Int) throws {
        name = configuration.name
        socketPath = configuration.socketPath
        var table: [Int: Unit] = [:]
        for (index, lun) in configuration.luns.enumerated() {
            let probe = try LUNProbe.run(lun.url, login: login)
            Log.info("\(configuration.name): guest \(lun.address) = \(lun.url): \(probe.vendor) \(probe.product), "
                     + "\(probe.blocks) blocks of \(probe.blockSize) bytes (\(probe.bytes / 1_048_576) MiB)")
            table[index] = Unit(address: lun.address, url: lun.url, probe: probe)
        }
        let units = UnitTable(table)
        self.units = units
        let lunMap = LUNMap(configuration.luns.map { (address: $0.address, backendLUN: $0.url.lun) })
        device = VirtioSCSIDevice(lunMap: lunMap, requestQueues: configuration.requestQueues) { backend, queue, maxOutstanding in
            guard let url = units.url(of: backend) else {
                throw ControllerError(description: "logical unit \(backend) was removed")
            }
            return try login.makeSession(url: url, queue: queue, maxOutstanding: maxOutstanding)
        }
        server = VhostUserServer(socketPath: configuration.socketPath, device: device,
                                 options: BackendOptions(drainTimeout: .seconds(drainTimeoutSeconds)))
        // With several controllers in one process, every line says which one it is about.
        device.setLogContext(["controller": "\(configuration.name)"])
        server.setLogContext(["controller": "\(configuration.name)"])
    }

    func start() throws { try server.start() }

    /// The line that says a controller is up (at start and when one is added at runtime).
    /// "vm1: serving 2 LUN(s) on 4 request queue(s) at PATH": the log line once it listens, and
    /// add-controller's answer.
    var servingSummary: String {
        "\(name): serving \(unitList.count) LUN(s) on \(device.requestQueueCount) request queue(s) at \(socketPath)"
    }

    /// Stops serving: the frontend connection ends after its in-flight I/O, sessions log out.
    func shutdown() {
        server.shutdown()
        device.closeSessions()
    }

    /// Probes `url` and, when it is a disk, adds it at `address`; the guest is told through the
    /// event queue. Returns the unit and what became of the event (nil: not known yet, see
    /// `NotificationWait`).
    func addLUN(address: VirtioSCSIAddress, url: ISCSIURL, login: LoginSettings) throws -> (Unit, GuestNotification?) {
        let probe = try LUNProbe.run(url, login: login)
        let unit = Unit(address: address, url: url, probe: probe)
        let notified = NotificationWait()
        try device.addLUN(address: address, backendLUN: url.lun, register: { id in units.set(unit, for: id) },
                          completion: notified.complete)
        Log.info("\(name): guest \(address) = \(url): \(probe.vendor) \(probe.product), \(probe.bytes / 1_048_576) MiB, added")
        return (unit, notified.wait())
    }

    /// Takes the unit at `address` away: its commands in flight are aborted, its sessions log
    /// out and the guest is told.
    func removeLUN(address: VirtioSCSIAddress) throws -> (Unit?, GuestNotification?) {
        let notified = NotificationWait()
        let removed = try device.removeLUN(address: address, completion: notified.complete)
        let unit = units.unit(of: removed.id)
        units.set(nil, for: removed.id)
        Log.info("\(name): guest \(address) removed")
        return (unit, notified.wait())
    }

    /// Reads the unit's capacity again; when it changed, the guest is told to re-read it.
    /// Returns the capacity before and after, whether it changed, and the event's fate.
    func refreshCapacity(address: VirtioSCSIAddress,
                         login: LoginSettings) throws -> (before: LUNProbe, after: LUNProbe, changed: Bool, guest: GuestNotification?) {
        guard let id = device.logicalUnits.first(where: { $0.address == address })?.id, var unit = units.unit(of: id) else {
            throw ControllerError(description: "no LUN at guest address \(address)")
        }
        let before = unit.probe
        let after = try LUNProbe.run(unit.url, login: login)
        guard after.blocks != before.blocks || after.blockSize != before.blockSize else { return (before, after, false, nil) }
        unit.probe = after
        units.set(unit, for: id)
        let notified = NotificationWait()
        try device.reportCapacityChanged(address: address, completion: notified.complete)
        Log.info("\(name): guest \(address) capacity \(before.bytes) -> \(after.bytes) bytes")
        return (before, after, true, notified.wait())
    }

    /// The logical units, in guest address order.
    var unitList: [Unit] {
        units.all.sorted { ($0.address.target, $0.address.lun) < ($1.address.target, $1.address.lun) }
    }
}

struct ControllerError: Error, CustomStringConvertible {
    var description: String
}

/// The units of a controller by backend id, read by the session factory on ring queues and
/// changed by the control socket.
final class UnitTable: Sendable {
    private let units: Mutex<[Int: Controller.Unit]>

    init(_ units: [Int: Controller.Unit]) { self.units = Mutex(units) }

    func url(of backend: Int) -> ISCSIURL? { units.withLock { $0[backend]?.url } }

    var all: [Controller.Unit] { units.withLock { Array($0.values) } }

    func unit(of backend: Int) -> Controller.Unit? { units.withLock { $0[backend] } }

    func set(_ unit: Controller.Unit?, for backend: Int) { units.withLock { $0[backend] = unit } }
}

/// Waits for a device change to reach every queue and the guest. Bounded: a queue busy with
/// a login to an unreachable target must not hang the control client forever.
final class NotificationWait: Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let result = Mutex<GuestNotification?>(nil)

    var complete: @Sendable (GuestNotification) -> Void {
        { [self] notification in
            result.withLock { $0 = notification }
            done.signal()
        }
    }

    /// What became of the event, or nil when the queues did not all confirm within `seconds`
    /// (one busy logging in to a silent target): the change is made and the event follows.
    func wait(seconds: Int = 60) -> GuestNotification? {
        _ = done.wait(timeout: .now() + .seconds(seconds))
        return result.withLock { $0 }
    }
}
