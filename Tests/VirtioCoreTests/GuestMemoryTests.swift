import Testing
import VirtioCore
import VirtioTestSupport

/// Address translation (the only path from a guest address to a pointer).
@Suite struct GuestMemoryTests {
    /// Two adjacent regions (0x0-0x10000, 0x10000-0x20000) and one far away at 0x100000.
    static func memory() throws -> TestGuestMemory {
        try TestGuestMemory(regions: [(0x10000, 0x10000), (0, 0x10000), (0x100000, 0x4000)])
    }

    @Test func translatesInsideARegion() throws {
        let m = try Self.memory()
        let g = m.guestMemory
        let region = try #require(m.regions.first { $0.guestPhysicalAddress == 0x10000 })
        let p = try #require(g.pointer(guest: 0x10010, length: 16))
        #expect(UInt(bitPattern: p) == region.hostAddress + 0x10)
        // The last byte of a region, and the whole region.
        #expect(g.pointer(guest: 0x1FFFF, length: 1) != nil)
        #expect(g.pointer(guest: 0x10000, length: 0x10000) != nil)
        #expect(g.pointer(guest: 0x100000, length: 0x4000) != nil)
        #expect(g.regions.map(\.guestPhysicalAddress) == [0, 0x10000, 0x100000], "regions are kept sorted")
    }

    @Test func refusesAddressesOutsideEveryRegion() throws {
        let g = try Self.memory().guestMemory
        #expect(g.pointer(guest: 0x20000, length: 1) == nil)     // just past the adjacent pair
        #expect(g.pointer(guest: 0x104000, length: 1) == nil)    // just past the last region
        #expect(g.pointer(guest: 0xFFFF_FFFF_FFFF_FFFF, length: 1) == nil)
        #expect(g.pointer(guest: 0x100000, length: 0x4001) == nil)   // runs off the end
        #expect(g.pointer(guest: 0x1000, length: -1) == nil)
        #expect(g.pointer(guest: 0x1000, length: Int.max) == nil)    // no overflow in the bound check
        #expect(GuestMemory.empty.pointer(guest: 0, length: 1) == nil)
    }

    @Test func pointerRefusesARangeStraddlingTwoRegions() throws {
        let g = try Self.memory().guestMemory
        // 0xFFF0+0x20 crosses from region 0 into region 1: not one contiguous host range.
        #expect(g.pointer(guest: 0xFFF0, length: 0x20) == nil)
    }

    @Test func forEachSegmentSplitsAtRegionBoundaries() throws {
        let m = try Self.memory()
        var pieces: [(Int, UInt64)] = []
        let ok = m.guestMemory.forEachSegment(guest: 0xFFF0, length: 0x20) { base, length, gpa in
            #expect(base == m.pointer(gpa, length: length))
            pieces.append((length, gpa))
            return true
        }
        #expect(ok)
        #expect(pieces.map(\.0) == [0x10, 0x10])
        #expect(pieces.map(\.1) == [0xFFF0, 0x10000])
        // A range that runs into a hole fails.
        #expect(!m.guestMemory.forEachSegment(guest: 0x1FFF0, length: 0x20) { _, _, _ in true })
        // The body can stop the walk.
        #expect(!m.guestMemory.forEachSegment(guest: 0xFFF0, length: 0x20) { _, _, _ in false })
    }

    @Test func translatesFrontendVirtualAddresses() throws {
        let m = try Self.memory()
        let g = m.guestMemory
        for region in m.regions {
            let fva = UInt64(region.hostAddress)  // the test frontend's address is its mapping
            let p = try #require(g.pointer(frontendVirtual: fva + 8, length: 8))
            #expect(UInt(bitPattern: p) == region.hostAddress + 8)
            #expect(g.pointer(frontendVirtual: fva + region.size - 4, length: 8) == nil, "runs off the region")
            #expect(g.pointer(frontendVirtual: fva, length: Int(region.size)) != nil)
        }
        #expect(g.pointer(frontendVirtual: 0x10, length: 1) == nil)
    }

    @Test func frontendTranslationUsesTheRegionsOwnAddresses() throws {
        // A region whose frontend address differs from its host mapping, as in the server.
        let host = UnsafeMutableRawPointer.allocate(byteCount: 0x1000, alignment: 4096)
        defer { host.deallocate() }
        let g = GuestMemory(regions: [GuestMemoryRegion(guestPhysicalAddress: 0x8000, size: 0x1000,
                                                        frontendVirtualAddress: 0x7F00_0000_0000,
                                                        hostAddress: UInt(bitPattern: host))], owner: nil)
        #expect(g.pointer(frontendVirtual: 0x7F00_0000_0010, length: 4) == host + 0x10)
        #expect(g.pointer(guest: 0x8010, length: 4) == host + 0x10)
        #expect(g.pointer(frontendVirtual: 0x8010, length: 4) == nil)
        #expect(g.pointer(guest: 0x7F00_0000_0010, length: 4) == nil)
    }
}
