import Testing
@testable import VirtioSCSI

/// The request path's lookup agrees with the map for short (linear) and long (bisected)
/// per-target lists, and follows changes.
@Suite struct LUNMapLookupTests {
    @Test func lookupMatchesTheMap() throws {
        // Target 0: 3 LUNs (linear search); target 7: 40 LUNs, every third number (bisection).
        var units: [(address: VirtioSCSIAddress, backendLUN: UInt16)] = [
            (VirtioSCSIAddress(target: 0, lun: 5), 1), (VirtioSCSIAddress(target: 0, lun: 0), 2),
            (VirtioSCSIAddress(target: 0, lun: 300), 3),
        ]
        for i in stride(from: 120, through: 3, by: -3) { units.append((VirtioSCSIAddress(target: 7, lun: UInt16(i)), UInt16(i))) }
        var map = LUNMap(units)
        for target: UInt8 in [0, 1, 7, 255] {
            for lun: UInt16 in Array(0...130) + [300, 16383] {
                let address = VirtioSCSIAddress(target: target, lun: lun)
                let expected: LUNMap.Lookup = !map.hasTarget(target) ? .noTarget
                    : map.unit(at: address).map { .unit($0) } ?? .noUnit
                #expect(map.lookup(address) == expected, "\(address)")
            }
        }
        #expect(map.lookup(VirtioSCSIAddress(target: 7, lun: 60)) == .unit(map.unit(at: VirtioSCSIAddress(target: 7, lun: 60))!))

        try map.remove(address: VirtioSCSIAddress(target: 0, lun: 5))
        #expect(map.lookup(VirtioSCSIAddress(target: 0, lun: 5)) == .noUnit)
        try map.remove(address: VirtioSCSIAddress(target: 0, lun: 0))
        try map.remove(address: VirtioSCSIAddress(target: 0, lun: 300))
        #expect(map.lookup(VirtioSCSIAddress(target: 0, lun: 0)) == .noTarget)
        let added = try map.add(address: VirtioSCSIAddress(target: 1, lun: 2), backendLUN: 9)
        #expect(map.lookup(VirtioSCSIAddress(target: 1, lun: 2)) == .unit(added))
    }
}
