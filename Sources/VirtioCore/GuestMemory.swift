/// One contiguous piece of guest RAM mapped into this process.
public struct GuestMemoryRegion: Sendable, Equatable {
    /// Guest physical address of the first byte.
    public var guestPhysicalAddress: UInt64
    public var size: UInt64
    /// The frontend's (QEMU's) virtual address of the first byte; ring addresses use it.
    public var frontendVirtualAddress: UInt64
    /// Where the region is mapped in this process, as an integer so the type stays Sendable.
    public var hostAddress: UInt

    public init(guestPhysicalAddress: UInt64, size: UInt64, frontendVirtualAddress: UInt64, hostAddress: UInt) {
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.frontendVirtualAddress = frontendVirtualAddress
        self.hostAddress = hostAddress
    }

    @inline(__always)
    func contains(guest address: UInt64) -> Bool {
        address >= guestPhysicalAddress && address - guestPhysicalAddress < size
    }
}

/// An immutable, reference-counted snapshot of the guest's memory table.
///
/// A new memory table (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) makes a new snapshot; each
/// started ring and each in-flight request holds the snapshot it translated its addresses
/// with, and the mappings are released (by `owner`'s deinit) only when the last holder lets
/// go. So an iSCSI transfer can never write into memory that was unmapped under it.
///
/// Every translation checks bounds against the regions; no address from the guest or the
/// frontend reaches a pointer without passing through here.
public final class GuestMemory: @unchecked Sendable {
    // @unchecked: immutable after init; `owner` is only kept alive, never used.
    public let regions: [GuestMemoryRegion]
    private let owner: AnyObject?

    /// `regions` must not overlap in guest physical address space.
    public init(regions: [GuestMemoryRegion], owner: AnyObject?) {
        self.regions = regions.sorted { $0.guestPhysicalAddress < $1.guestPhysicalAddress }
        self.owner = owner
    }

    public static let empty = GuestMemory(regions: [], owner: nil)

    /// Index of the region containing guest physical `address`.
    @inline(__always)
    func regionIndex(containing address: UInt64) -> Int? {
        var low = 0
        var high = regions.count - 1
        while low <= high {
            let mid = (low + high) >> 1
            let region = regions[mid]
            if address < region.guestPhysicalAddress {
                high = mid - 1
            } else if address - region.guestPhysicalAddress >= region.size {
                low = mid + 1
            } else {
                return mid
            }
        }
        return nil
    }

    /// Host pointer for `length` bytes at guest physical `address`, or nil unless the whole
    /// range lies inside one region.
    public func pointer(guest address: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        guard length >= 0, let index = regionIndex(containing: address) else { return nil }
        let region = regions[index]
        let offset = address - region.guestPhysicalAddress
        guard UInt64(length) <= region.size - offset else { return nil }
        return UnsafeMutableRawPointer(bitPattern: region.hostAddress + UInt(offset))
    }

    /// Host pointer for `length` bytes at the frontend's virtual `address` (ring addresses of
    /// SET_VRING_ADDR), or nil unless the whole range lies inside one region.
    public func pointer(frontendVirtual address: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        guard length >= 0 else { return nil }
        for region in regions where address >= region.frontendVirtualAddress {
            let offset = address - region.frontendVirtualAddress
            guard offset < region.size, UInt64(length) <= region.size - offset else { continue }
            return UnsafeMutableRawPointer(bitPattern: region.hostAddress + UInt(offset))
        }
        return nil
    }

    /// Calls `body` with host pointers covering `length` bytes at guest `address`, split at
    /// region boundaries. Returns false (after possibly calling `body` for a prefix) when
    /// part of the range is not mapped.
    @inline(__always)
    public func forEachSegment(guest address: UInt64, length: Int,
                               _ body: (UnsafeMutableRawPointer, Int, UInt64) -> Bool) -> Bool {
        var address = address
        var remaining = UInt64(length)
        while remaining > 0 {
            guard let index = regionIndex(containing: address) else { return false }
            let region = regions[index]
            let offset = address - region.guestPhysicalAddress
            let chunk = min(remaining, region.size - offset)
            // SAFETY: offset + chunk <= region.size, and the region is mapped for our lifetime.
            guard let base = UnsafeMutableRawPointer(bitPattern: region.hostAddress + UInt(offset)),
                  body(base, Int(chunk), address) else { return false }
            address &+= chunk
            remaining -= chunk
        }
        return true
    }
}
