import Dispatch
import Glibc
import SCSICore
import Testing
import VhostUserBackend
import VhostUserProtocol
import VhostUserSCSI
import VirtioCore
import VirtioSCSI
import VirtioTestSupport

/// A real `VhostUserServer` with a real `VirtioSCSIDevice` whose logical units are
/// `RecordingSCSITarget`s, listening in a fresh temporary directory.
///
/// Configured units: target 0 LUN 0 (backend 0) and target 0 LUN 300 (backend 1, flat
/// addressing). Vring 0 is the control queue, 1 the event queue, 2... the request queues.
final class ServerHarness {
    static let units: [(address: VirtioSCSIAddress, backendLUN: UInt16)] = [
        (VirtioSCSIAddress(target: 0, lun: 0), 0),
        (VirtioSCSIAddress(target: 0, lun: 300), 7),
    ]

    let directory: String
    let socketPath: String
    let backend: RecordingSCSIBackend
    let device: VirtioSCSIDevice
    let server: VhostUserServer

    /// `spareDisks` more disks back units added at runtime: ids 2, 3, ... (see HotplugTests).
    init(requestQueues: Int = 1, drainTimeout: DispatchTimeInterval = .seconds(5), spareDisks: Int = 0) throws {
        let tmp = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array("\(tmp)/vus-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw TestSupportError.system("mkdtemp", errno) }
        directory = String(cString: made)
        socketPath = directory + "/vhost-user-scsi.sock"
        backend = RecordingSCSIBackend(units: Self.units.count + spareDisks, blocks: 4096)  // 2 MiB each
        device = VirtioSCSIDevice(lunMap: LUNMap(Self.units), requestQueues: requestQueues,
                                  sessionFactory: backend.sessionFactory)
        server = VhostUserServer(socketPath: socketPath, device: device, options: BackendOptions(drainTimeout: drainTimeout))
        try server.start()
    }

    /// Releases anything still held, stops the server and removes the directory.
    func stop() {
        backend.releaseAll()
        server.shutdown()
        device.closeSessions()
        unlink(socketPath)
        rmdir(directory)
    }

    /// Waits (bounded) until the server has cleaned up its connection.
    func waitDisconnected(timeout: Double = 5) -> Bool {
        waitUntil(timeout: timeout) { !server.isConnected }
    }

    /// Connects a guest driver and starts all rings like QEMU does.
    func connectGuest(queueSize: UInt16 = 128,
                      regions: [(guestAddress: UInt64, size: Int)] = GuestDriver.defaultRegions,
                      features: VirtioFeatures = FakeFrontend.qemuFeatures) throws -> GuestDriver {
        try GuestDriver(socketPath: socketPath, queueCount: device.queueCount, queueSize: queueSize, regions: regions,
                        features: features)
    }
}

/// A parsed virtio_scsi_cmd_resp (virtio v1.2 §5.6.6.1): 12 bytes and the 96-byte sense.
struct CommandResponse: Equatable {
    var senseLength: UInt32
    var residual: UInt32
    var statusQualifier: UInt16
    var status: UInt8
    var response: UInt8
    var sense: [UInt8]

    init(_ b: [UInt8]) {
        precondition(b.count == VirtioSCSICommandResponse.byteCount)
        func le32(_ o: Int) -> UInt32 { UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24 }
        senseLength = le32(0)
        residual = le32(4)
        statusQualifier = UInt16(b[8]) | UInt16(b[9]) << 8
        status = b[10]
        response = b[11]
        sense = Array(b[12..<108])
    }
}

/// Splits of each part of a request across descriptors; sizes that do not add up are
/// completed by a last piece. `indirect` puts the whole chain in an indirect table.
struct ChainLayout {
    var header: [Int] = []
    var dataOut: [Int] = []
    var response: [Int] = []
    var dataIn: [Int] = []
    var indirect = false
    /// Put the response header and data-in into a single buffer (and header+data-out too).
    var merged = false

    static let simple = ChainLayout()
}

/// One virtio-scsi request as posted by the driver, and where its writable parts live.
struct PostedRequest {
    var head: UInt16
    var queueIndex: Int
    var responseAddress: UInt64
    var dataInAddress: UInt64
    var dataInLength: Int
}

/// The guest side: memory, one mock split queue per vring, and a fake frontend that set it up.
final class GuestDriver {
    let memory: TestGuestMemory
    let frontend: FakeFrontend
    let rings: [MockSplitQueue]
    private var nextID: UInt64 = 1

    /// Two regions like a small x86 guest: low RAM and RAM above a hole at 4 GiB.
    static let defaultRegions: [(guestAddress: UInt64, size: Int)] = [(0, 4 << 20), (0x1_0000_0000, 4 << 20)]

    init(socketPath: String, queueCount: Int, queueSize: UInt16,
         regions: [(guestAddress: UInt64, size: Int)] = GuestDriver.defaultRegions,
         features: VirtioFeatures = FakeFrontend.qemuFeatures) throws {
        memory = try TestGuestMemory(regions: regions)
        frontend = try FakeFrontend(socketPath: socketPath)
        let queues = try frontend.negotiate(features: features)
        guard queues == queueCount else { throw TestSupportError.protocolError("GET_QUEUE_NUM \(queues), expected \(queueCount)") }
        let memory = self.memory
        rings = (0..<queueCount).map { _ in MockSplitQueue(memory: memory, size: queueSize) }
        try frontend.startQueues(memory: memory, rings: rings)
    }

    /// The 8-byte LUN field (virtio v1.2 §5.6.6.1): {1, target, 0x40 | lun >> 8, lun & 0xff, 0...}.
    static func lunField(target: UInt8, lun: UInt16) -> [UInt8] {
        [1, target, 0x40 | UInt8(lun >> 8), UInt8(lun & 0xFF), 0, 0, 0, 0]
    }

    /// virtio_scsi_cmd_req: lun[8], id (le64), task_attr, prio, crn, cdb[32] = 51 bytes.
    static func requestHeader(lun: [UInt8], id: UInt64, cdb: [UInt8], taskAttribute: UInt8 = 0) -> [UInt8] {
        precondition(lun.count == 8 && cdb.count <= 32)
        var h = lun
        withUnsafeBytes(of: id.littleEndian) { h.append(contentsOf: $0) }
        h += [taskAttribute, 0, 0]
        h += cdb + [UInt8](repeating: 0, count: 32 - cdb.count)
        precondition(h.count == VirtioSCSICommandHeader.byteCount)
        return h
    }

    /// Allocates `bytes` and splits it into buffers of the given sizes (the remainder last).
    private func pieces(of bytes: [UInt8], sizes: [Int], writable: Bool) -> (UInt64, [MockBuffer]) {
        let base = memory.allocate(copying: bytes)
        return (base, Self.split(base: base, length: bytes.count, sizes: sizes, writable: writable))
    }

    static func split(base: UInt64, length: Int, sizes: [Int], writable: Bool) -> [MockBuffer] {
        var buffers: [MockBuffer] = []
        var offset = 0
        for size in sizes where offset < length {
            let n = min(size, length - offset)
            buffers.append(MockBuffer(address: base + UInt64(offset), length: UInt32(n), writable: writable))
            offset += n
        }
        if offset < length {
            buffers.append(MockBuffer(address: base + UInt64(offset), length: UInt32(length - offset), writable: writable))
        }
        return buffers
    }

    /// Posts a command on request vring `queue` (2...) and kicks. Data-out is copied into
    /// guest memory; `dataIn` bytes of writable buffer are provided after the response.
    @discardableResult
    func post(queue: Int = 2, target: UInt8 = 0, lun: UInt16 = 0, lunField: [UInt8]? = nil, id: UInt64? = nil,
              cdb: [UInt8], dataOut: [UInt8] = [], dataIn: Int = 0, layout: ChainLayout = .simple,
              kick: Bool = true) -> PostedRequest {
        let requestID = id ?? nextID
        nextID += 1
        let header = Self.requestHeader(lun: lunField ?? Self.lunField(target: target, lun: lun), id: requestID, cdb: cdb)
        var buffers: [MockBuffer] = []
        let responseAddress: UInt64
        let dataInAddress: UInt64
        if layout.merged {
            let readable = header + dataOut
            buffers += pieces(of: readable, sizes: layout.header, writable: false).1
            let base = memory.allocate(VirtioSCSICommandResponse.byteCount + max(dataIn, 0))
            memory.fill(base, count: VirtioSCSICommandResponse.byteCount + dataIn, with: 0xEE)
            buffers += Self.split(base: base, length: VirtioSCSICommandResponse.byteCount + dataIn,
                                  sizes: layout.response, writable: true)
            responseAddress = base
            dataInAddress = base + UInt64(VirtioSCSICommandResponse.byteCount)
        } else {
            buffers += pieces(of: header, sizes: layout.header, writable: false).1
            if !dataOut.isEmpty { buffers += pieces(of: dataOut, sizes: layout.dataOut, writable: false).1 }
            let response = pieces(of: [UInt8](repeating: 0xEE, count: VirtioSCSICommandResponse.byteCount),
                                  sizes: layout.response, writable: true)
            responseAddress = response.0
            buffers += response.1
            if dataIn > 0 {
                let d = pieces(of: [UInt8](repeating: 0xEE, count: dataIn), sizes: layout.dataIn, writable: true)
                dataInAddress = d.0
                buffers += d.1
            } else {
                dataInAddress = 0
            }
        }
        let ring = rings[queue]
        let head = layout.indirect ? ring.addIndirectChain(buffers) : ring.addChain(buffers)
        ring.publish(head)
        if kick { frontend.kick(queue) }
        return PostedRequest(head: head, queueIndex: queue, responseAddress: responseAddress,
                             dataInAddress: dataInAddress, dataInLength: dataIn)
    }

    /// Posts a chain of explicit buffers on vring `queue` and waits for its used element.
    func executeRaw(queue: Int = 2, _ buffers: [MockBuffer]) throws -> UsedElement {
        let head = rings[queue].addChain(buffers)
        rings[queue].publish(head)
        frontend.kick(queue)
        let used = try waitForUsed(queue: queue)
        guard used.count == 1, used[0].id == UInt32(head) else {
            throw TestSupportError.protocolError("unexpected used elements \(used) for head \(head)")
        }
        return used[0]
    }

    func response(of r: PostedRequest) -> CommandResponse {
        CommandResponse(memory.read(r.responseAddress, count: VirtioSCSICommandResponse.byteCount))
    }

    func dataIn(of r: PostedRequest, count: Int? = nil) -> [UInt8] {
        memory.read(r.dataInAddress, count: count ?? r.dataInLength)
    }

    /// Waits for `count` used elements on vring `queue` (interrupt-driven, bounded).
    func waitForUsed(queue: Int = 2, count: Int = 1, timeout: Double = 5) throws -> [UsedElement] {
        try frontend.waitForUsed(rings[queue], index: queue, count: count, timeout: timeout)
    }

    /// Posts one command and waits for its used element.
    func execute(queue: Int = 2, target: UInt8 = 0, lun: UInt16 = 0, cdb: [UInt8], dataOut: [UInt8] = [],
                 dataIn: Int = 0, layout: ChainLayout = .simple) throws -> (PostedRequest, UsedElement, CommandResponse) {
        let r = post(queue: queue, target: target, lun: lun, cdb: cdb, dataOut: dataOut, dataIn: dataIn, layout: layout)
        let used = try waitForUsed(queue: queue)
        guard used.count == 1, used[0].id == UInt32(r.head) else {
            throw TestSupportError.protocolError("unexpected used elements \(used) for head \(r.head)")
        }
        return (r, used[0], response(of: r))
    }

    // MARK: - Control queue (vring 0)

    /// Posts a TMF request (virtio_scsi_ctrl_tmf_req: type 0, subtype, lun[8], id) and kicks.
    /// Returns the head and the address of the one-byte response.
    func postTMF(subtype: VirtioSCSITMFSubtype, target: UInt8 = 0, lun: UInt16 = 0, id: UInt64 = 0) -> (UInt16, UInt64) {
        var req: [UInt8] = []
        withUnsafeBytes(of: VirtioSCSIControlType.taskManagement.rawValue.littleEndian) { req.append(contentsOf: $0) }
        withUnsafeBytes(of: subtype.rawValue.littleEndian) { req.append(contentsOf: $0) }
        req += Self.lunField(target: target, lun: lun)
        withUnsafeBytes(of: id.littleEndian) { req.append(contentsOf: $0) }
        let reqAddress = memory.allocate(copying: req)
        let respAddress = memory.allocate(copying: [0xEE])
        let ring = rings[0]
        let head = ring.addChain([.readable(reqAddress, req.count), .writable(respAddress, 1)])
        ring.publish(head)
        frontend.kick(0)
        return (head, respAddress)
    }
}

// MARK: - CDBs

enum CDBs {
    static func be<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }

    static func read16(lba: UInt64, blocks: UInt32) -> [UInt8] { [0x88, 0] + be(lba) + be(blocks) + [0, 0] }
    static func write16(lba: UInt64, blocks: UInt32) -> [UInt8] { [0x8A, 0] + be(lba) + be(blocks) + [0, 0] }
    static func read10(lba: UInt32, blocks: UInt16) -> [UInt8] { [0x28, 0] + be(lba) + [0] + be(blocks) + [0] }
    static func write10(lba: UInt32, blocks: UInt16) -> [UInt8] { [0x2A, 0] + be(lba) + [0] + be(blocks) + [0] }
    static let testUnitReady: [UInt8] = [0, 0, 0, 0, 0, 0]
    static func inquiry(allocation: UInt16 = 96) -> [UInt8] { [0x12, 0, 0] + be(allocation) + [0] }
    static func reportLUNs(allocation: UInt32 = 256) -> [UInt8] { [0xA0, 0, 0, 0, 0, 0] + be(allocation) + [0, 0] }
    static let readCapacity10: [UInt8] = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// A deterministic byte pattern.
func pattern(_ count: Int, seed: UInt32) -> [UInt8] {
    var x = seed | 1
    return (0..<count).map { _ in
        x ^= x << 13; x ^= x >> 17; x ^= x << 5
        return UInt8(truncatingIfNeeded: x)
    }
}
