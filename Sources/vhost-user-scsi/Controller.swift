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
    }

    func start() throws { try server.start() }

    /// Stops serving: the frontend connection ends after its in-flight I/O, sessions log out.
    func shutdown() {
        server.shutdown()
        device.closeSessions()
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

    func set(_ unit: Controller.Unit?, for backend: Int) { units.withLock { $0[backend] = unit } }
}
