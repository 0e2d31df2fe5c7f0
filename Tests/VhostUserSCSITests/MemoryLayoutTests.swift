import Glibc
import Testing
import VhostUserProtocol
import VhostUserSCSI
import VirtioSCSI
import VirtioTestSupport

/// Guest memory as the server maps it from the frontend's fds: buffers in any region,
/// buffers crossing from one region's mapping into the next, and memory table changes while
/// the rings run (memory hotplug).
@Suite struct MemoryLayoutTests {
    static let responseBytes = VirtioSCSICommandResponse.byteCount

    static func header(_ cdb: [UInt8], lun: UInt16 = 0) -> [UInt8] {
        GuestDriver.requestHeader(lun: GuestDriver.lunField(target: 0, lun: lun), id: 1, cdb: cdb)
    }

    /// Data buffers in the high region and buffers straddling two guest-physically adjacent
    /// regions (separate memfds, so separate mappings in the server).
    @Test func buffersAcrossAdjacentRegionsAndAboveFourGiB() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest(regions: [(0, 2 << 20), (2 << 20, 2 << 20), (0x1_0000_0000, 4 << 20)])
        let m = g.memory
        let data = pattern(4096, seed: 21)
        let straddling: UInt64 = (2 << 20) - 1000
        m.write(data, at: straddling)
        let wHeader = m.allocate(copying: Self.header(CDBs.write10(lba: 50, blocks: 8)))
        let wResp = m.allocate(Self.responseBytes)
        let wUsed = try g.executeRaw([.readable(wHeader, 51), .readable(straddling, 4096), .writable(wResp, Self.responseBytes)])
        #expect(wUsed.length == UInt32(Self.responseBytes))
        #expect(CommandResponse(m.read(wResp, count: Self.responseBytes)).response == 0)
        #expect(h.backend.disks[0].read(block: 50, count: 8) == data)

        // Read it back into the high region and, again, across the boundary.
        let targets: [UInt64] = [0x1_0000_0000 + (3 << 20), (2 << 20) - 300]
        for target in targets {
            m.fill(target, count: 4096, with: 0)
            let rHeader = m.allocate(copying: Self.header(CDBs.read10(lba: 50, blocks: 8)))
            let rResp = m.allocate(Self.responseBytes)
            let used = try g.executeRaw([.readable(rHeader, 51), .writable(rResp, Self.responseBytes), .writable(target, 4096)])
            #expect(used.length == UInt32(Self.responseBytes + 4096))
            #expect(m.read(target, count: 4096) == data, "data-in at 0x\(String(target, radix: 16))")
        }
    }

    /// A frontend that shrinks its RAM memfd after SET_MEM_TABLE would make the server's next
    /// touch of the cut pages raise SIGBUS. The server sealed it: the shrink fails with EPERM,
    /// growing still works, and I/O into the last page of the region goes on.
    @Test func guestRAMCannotBeShrunkUnderTheServer() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        _ = try g.execute(cdb: CDBs.testUnitReady)  // SET_MEM_TABLE has been handled
        let region = try #require(g.memory.regions.first)
        #expect(ftruncate(region.fd, off_t(region.size / 2)) == -1 && errno == EPERM, "shrinking is sealed")
        #expect(ftruncate(region.fd, off_t(region.size + 4096)) == 0, "growing is not")

        let data = pattern(4096, seed: 5)
        _ = try g.execute(cdb: CDBs.write10(lba: 8, blocks: 8), dataOut: data)
        let last = region.guestPhysicalAddress + region.size - 4096
        let header = g.memory.allocate(copying: Self.header(CDBs.read10(lba: 8, blocks: 8)))
        let response = g.memory.allocate(Self.responseBytes)
        let used = try g.executeRaw([.readable(header, 51), .writable(response, Self.responseBytes), .writable(last, 4096)])
        #expect(used.length == UInt32(Self.responseBytes + 4096))
        #expect(g.memory.read(last, count: 4096) == data)
    }

    /// SET_MEM_TABLE while the rings run: the rings move to the new mappings and buffers in a
    /// region that was just added are usable; before, they are refused (used length 0).
    @Test func memoryTableChangeWhileRunning() throws {
        let h = try ServerHarness()
        defer { h.stop() }
        let g = try h.connectGuest()
        let m = g.memory
        let extra = try TestGuestMemory(size: 1 << 20, guestAddress: 0x2_0000_0000)
        let data = pattern(512, seed: 8)
        h.backend.disks[0].write(block: 3, data)
        func readIntoExtraRegion() throws -> UsedElement {
            let header = m.allocate(copying: Self.header(CDBs.read10(lba: 3, blocks: 1)))
            let resp = m.allocate(Self.responseBytes)
            return try g.executeRaw([.readable(header, 51), .writable(resp, Self.responseBytes), .writable(0x2_0000_0000, 512)])
        }
        #expect(try readIntoExtraRegion().length == 0, "not in the memory table yet")

        let table = MemoryTable(regions: m.memoryTable.regions + extra.memoryTable.regions)
        try g.frontend.command(.setMemTable, payload: table.encoded(), fds: m.fileDescriptors + extra.fileDescriptors)
        #expect(try readIntoExtraRegion().length == UInt32(Self.responseBytes + 512))
        #expect(extra.read(0x2_0000_0000, count: 512) == data)
        // The rings themselves still work from the new mapping of the old region.
        let (_, _, resp) = try g.execute(cdb: CDBs.testUnitReady)
        #expect(resp.response == 0)
    }
}
