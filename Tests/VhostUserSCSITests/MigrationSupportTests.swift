import Glibc
import Testing
import VhostUserBackend
import VhostUserProtocol
import VirtioCore
import VirtioSCSI
import VirtioTestSupport

/// A dirty log shared with the server like QEMU does during migration (vhost-user spec,
/// "Migration"): one bit per 4 KiB page of guest physical address space.
final class TestDirtyLog {
    /// A memfd mapped shared, borrowed from the guest-memory helper.
    private let backing: SharedGuestMemory
    let size: Int
    var fd: Int32 { backing.regions[0].fd }
    var bitmap: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: backing.regions[0].hostAddress)! }

    init(coveringUpTo top: UInt64) throws {
        size = Int((top / 4096 + 7) / 8)
        backing = try SharedGuestMemory(size: (size + 4095) & ~4095)
    }

    func clear() { memset(bitmap, 0, size) }

    func isDirty(page: UInt64) -> Bool {
        bitmap.load(fromByteOffset: Int(page / 8), as: UInt8.self) & (1 << UInt8(page % 8)) != 0
    }

    /// Every page that `length` bytes at `address` touch is marked.
    func covers(_ address: UInt64, _ length: Int) -> Bool {
        (address / 4096...(address + UInt64(length) - 1) / 4096).allSatisfy(isDirty(page:))
    }

    var dirtyCount: Int {
        (0..<size).reduce(0) { $0 + bitmap.load(fromByteOffset: $1, as: UInt8.self).nonzeroBitCount }
    }
}

@Suite struct DirtyLogTests {
    /// Turns logging on like QEMU at the start of a migration: LOG_SHMFD, SET_LOG_BASE (which
    /// always gets a reply), VHOST_F_LOG_ALL, and VHOST_VRING_F_LOG on the request ring.
    func startLogging(_ g: GuestDriver, log: TestDirtyLog, queue: Int = 2) throws {
        try g.frontend.setProtocolFeatures(g.frontend.protocolFeatures.union(.logSHMFD))
        var payload: [UInt8] = []
        payload.appendUnaligned(UInt64(log.size))
        payload.appendUnaligned(UInt64(0))
        try g.frontend.sendRaw(request: VhostUserRequest.setLogBase.rawValue, payload: payload, fds: [log.fd])
        #expect(try g.frontend.awaitOutcome(of: VhostUserRequest.setLogBase.rawValue, expectAck: true) == .ack(0))
        try g.frontend.setFeatures(g.frontend.features.union(.logAll))
        var address = g.rings[queue].vringAddress(index: UInt32(queue))
        address.flags = VringAddress.flagLog
        address.log = g.rings[queue].usedAddress
        try g.frontend.setVringAddr(address)
    }

    @Test func logAllIsOffered() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let frontend = try FakeFrontend(socketPath: h.socketPath)
        #expect(try frontend.getFeatures().contains(.logAll))
        #expect(try frontend.getProtocolFeatures().contains(.logSHMFD))
    }

    /// Data-in spanning pages and both memory regions, the response header and the used
    /// ring are all marked before the request is seen as used.
    @Test(arguments: [ChainLayout.simple, ChainLayout(header: [7, 44], dataIn: [100, 5000, 4096])])
    func everyDeviceWriteIsLogged(layout: ChainLayout) throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let log = try TestDirtyLog(coveringUpTo: 0x1_0000_0000 + (4 << 20))
        try startLogging(g, log: log)
        log.clear()
        let length = 3 * 4096 + 1024
        let (r, used, response) = try g.execute(cdb: CDBs.read16(lba: 0, blocks: UInt32((length + 511) / 512)),
                                                dataIn: length, layout: layout)
        #expect(response.response == VirtioSCSIResponse.ok.rawValue)
        #expect(used.length > 0)
        #expect(log.covers(r.dataInAddress, length), "data-in pages marked")
        #expect(log.covers(r.responseAddress, VirtioSCSICommandResponse.byteCount), "response header marked")
        #expect(log.covers(g.rings[2].usedAddress, SplitQueueLayout.usedRingBytes(size: g.rings[2].size)),
                "used ring marked")
    }

    @Test func nothingIsLoggedOnceLoggingIsOff() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let log = try TestDirtyLog(coveringUpTo: 0x1_0000_0000 + (4 << 20))
        try startLogging(g, log: log)
        _ = try g.execute(cdb: CDBs.read16(lba: 0, blocks: 8), dataIn: 4096)
        #expect(log.dirtyCount > 0)
        try g.frontend.setFeatures(g.frontend.features.subtracting(.logAll))
        log.clear()
        _ = try g.execute(cdb: CDBs.read16(lba: 0, blocks: 8), dataIn: 4096)
        #expect(log.dirtyCount == 0)
    }

    /// QEMU may replace the log mid-migration (memory hot-add grows it): writes go to the new one.
    @Test func aReplacedLogIsUsed() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let first = try TestDirtyLog(coveringUpTo: 0x1_0000_0000 + (4 << 20))
        try startLogging(g, log: first)
        let second = try TestDirtyLog(coveringUpTo: 0x1_0000_0000 + (8 << 20))
        var payload: [UInt8] = []
        payload.appendUnaligned(UInt64(second.size))
        payload.appendUnaligned(UInt64(0))
        try g.frontend.sendRaw(request: VhostUserRequest.setLogBase.rawValue, payload: payload, fds: [second.fd])
        #expect(try g.frontend.awaitOutcome(of: VhostUserRequest.setLogBase.rawValue, expectAck: true) == .ack(0))
        first.clear()
        let (r, _, _) = try g.execute(cdb: CDBs.read16(lba: 0, blocks: 8), dataIn: 4096)
        #expect(second.covers(r.dataInAddress, 4096))
        #expect(first.dirtyCount == 0)
    }
}

@Suite struct InflightTests {
    /// GET_INFLIGHT_FD then SET_INFLIGHT_FD, as QEMU does before starting the rings.
    @Test func requestsAreTrackedFromPopToPush() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let frontend = try FakeFrontend(socketPath: h.socketPath)
        try frontend.negotiate(protocolFeatures: FakeFrontend.qemuProtocolFeatures.union(.inflightSHMFD))
        var request: [UInt8] = []
        request.appendUnaligned(UInt64(0))
        request.appendUnaligned(UInt64(0))
        request.appendUnaligned(UInt16(h.device.queueCount))
        request.appendUnaligned(UInt16(128))
        request.appendUnaligned(UInt32(0))
        try frontend.sendRaw(request: VhostUserRequest.getInflightFD.rawValue, payload: request)
        // The reply carries the region's fd; keep it (receive() would close it).
        let reply = try frontend.receiveWithFileDescriptors()
        #expect(reply.fds.count == 1)
        let size = reply.payload.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        let queueBytes = (16 + 16 * 128 + 63) & ~63
        #expect(size == UInt64(queueBytes * h.device.queueCount))
        let fd = reply.fds[0]
        defer { close(fd) }
        var set = reply.payload
        set.replaceSubrange(8..<16, with: [UInt8](repeating: 0, count: 8))
        try frontend.sendRaw(request: VhostUserRequest.setInflightFD.rawValue, flags: [.version1, .needReply],
                             payload: set, fds: [fd])
        #expect(try frontend.awaitOutcome(of: VhostUserRequest.setInflightFD.rawValue, expectAck: true) == .ack(0))
        let region = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)!
        defer { munmap(region, Int(size)) }

        let memory = try TestGuestMemory(regions: GuestDriver.defaultRegions)
        let rings = (0..<h.device.queueCount).map { _ in MockSplitQueue(memory: memory, size: 128) }
        try frontend.startQueues(memory: memory, rings: rings)
        let queue2 = region + 2 * queueBytes
        #expect(queue2.load(fromByteOffset: 8, as: UInt16.self) == 1, "version initialised")
        #expect(queue2.load(fromByteOffset: 10, as: UInt16.self) == 128, "desc_num initialised")

        h.backend.hold()
        let header = GuestDriver.requestHeader(lun: GuestDriver.lunField(target: 0, lun: 0), id: 1,
                                               cdb: CDBs.read16(lba: 0, blocks: 1))
        let headAddress = memory.allocate(copying: header)
        let response = memory.allocate(VirtioSCSICommandResponse.byteCount + 512)
        let head = rings[2].addChain([.readable(headAddress, header.count),
                                      .writable(response, VirtioSCSICommandResponse.byteCount + 512)])
        rings[2].publish(head)
        frontend.kick(2)
        #expect(h.backend.waitForCommands(1))
        let entry = queue2 + 16 + 16 * Int(head)
        #expect(entry.load(as: UInt8.self) == 1, "in flight while the target holds it")
        #expect(entry.load(fromByteOffset: 8, as: UInt64.self) > 0, "counter set")
        h.backend.releaseAll()
        _ = try frontend.waitForUsed(rings[2], index: 2, count: 1)
        #expect(entry.load(as: UInt8.self) == 0, "cleared once pushed")
        #expect(queue2.load(fromByteOffset: 14, as: UInt16.self) == rings[2].usedIndex, "used_idx follows the ring")
    }
}
