import Glibc
internal import CVhostShims
import VhostUserProtocol
import VirtioCore

/// Guest RAM as a VMM provides it to a vhost-user backend: one memfd per region, mapped
/// MAP_SHARED in this process so the same memory can be handed to the backend as file
/// descriptors with SET_MEM_TABLE. The frontend virtual address of a region is where it is
/// mapped here, as in QEMU.
///
/// Addresses are guest physical addresses. A bump allocator hands out guest buffers (nothing
/// is freed; allocate everything up front). Not thread-safe for allocation; once set up, the
/// memory itself is shared freely (the returned pointers stay valid for the object's lifetime).
public final class SharedGuestMemory: @unchecked Sendable {
    public struct Region: Sendable {
        public let guestPhysicalAddress: UInt64
        public let size: UInt64
        public let fd: Int32
        /// Mapping address in this process, also the frontend virtual address.
        public let hostAddress: UInt
    }

    public let regions: [Region]
    /// The same regions as the device-side `GuestMemory` type, translated in this process.
    public let guestMemory: GuestMemory
    private let allocationOrder: [Int]
    private var allocationRegion = 0
    private var allocationOffset: UInt64 = 0

    /// Regions at the given guest physical addresses; they must not overlap.
    public init(regions layout: [(guestAddress: UInt64, size: Int)]) throws {
        var made: [Region] = []
        do {
            for (i, entry) in layout.enumerated() {
                // Sealable, as QEMU's memory-backend-memfd makes its RAM.
                let fd = CVhostShims_memfd_create("guest-ram-\(i)", 1 | 2 /* MFD_CLOEXEC | MFD_ALLOW_SEALING */)
                guard fd >= 0 else { throw DriverError.system("memfd_create", errno) }
                guard ftruncate(fd, off_t(entry.size)) == 0 else {
                    let err = errno
                    close(fd)
                    throw DriverError.system("ftruncate", err)
                }
                let p = mmap(nil, entry.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                guard let p, p != MAP_FAILED else {
                    let err = errno
                    close(fd)
                    throw DriverError.system("mmap", err)
                }
                made.append(Region(guestPhysicalAddress: entry.guestAddress, size: UInt64(entry.size), fd: fd,
                                   hostAddress: UInt(bitPattern: p)))
            }
        } catch {
            for r in made {
                munmap(UnsafeMutableRawPointer(bitPattern: r.hostAddress), Int(r.size))
                close(r.fd)
            }
            throw error
        }
        regions = made
        guestMemory = GuestMemory(regions: made.map {
            GuestMemoryRegion(guestPhysicalAddress: $0.guestPhysicalAddress, size: $0.size,
                              frontendVirtualAddress: UInt64($0.hostAddress), hostAddress: $0.hostAddress)
        }, owner: nil)
        allocationOrder = made.indices.sorted { made[$0].guestPhysicalAddress < made[$1].guestPhysicalAddress }
    }

    /// One region of `size` bytes at guest physical `guestAddress`.
    public convenience init(size: Int = 8 << 20, guestAddress: UInt64 = 0) throws {
        try self.init(regions: [(guestAddress, size)])
    }

    deinit {
        for r in regions {
            munmap(UnsafeMutableRawPointer(bitPattern: r.hostAddress), Int(r.size))
            close(r.fd)
        }
    }

    /// The file descriptors to pass with SET_MEM_TABLE (still owned by this object).
    public var fileDescriptors: [Int32] { regions.map(\.fd) }

    /// SET_MEM_TABLE's payload for these regions (mmap offset 0, userspace address = mapping).
    public var memoryTable: MemoryTable {
        MemoryTable(regions: regions.map {
            MemoryRegionDescription(guestPhysicalAddress: $0.guestPhysicalAddress, size: $0.size,
                                    userAddress: UInt64($0.hostAddress), mmapOffset: 0)
        })
    }

    /// Host pointer for `length` bytes at `address` (which must lie in one region).
    public func pointer(_ address: UInt64, length: Int = 1) -> UnsafeMutableRawPointer {
        // SAFETY: GuestMemory bounds-checks the range against our own live mappings.
        guard let p = guestMemory.pointer(guest: address, length: length) else {
            preconditionFailure("driver bug: 0x\(String(address, radix: 16))+\(length) is not in one guest region")
        }
        return p
    }

    /// The frontend (VMM) virtual address of guest physical `address`.
    public func frontendAddress(ofGuest address: UInt64) -> UInt64 {
        UInt64(UInt(bitPattern: pointer(address)))
    }

    /// Writes `bytes` at `address`; the range may span adjacent regions.
    public func write(_ bytes: [UInt8], at address: UInt64) {
        var offset = 0
        // SAFETY: each segment lies inside one of our mappings (checked by forEachSegment).
        let ok = guestMemory.forEachSegment(guest: address, length: bytes.count) { base, length, _ in
            bytes.withUnsafeBytes { base.copyMemory(from: $0.baseAddress! + offset, byteCount: length) }
            offset += length
            return true
        }
        precondition(ok, "driver bug: write outside guest memory")
    }

    /// Reads `count` bytes at `address`; the range may span adjacent regions.
    public func read(_ address: UInt64, count: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        let ok = guestMemory.forEachSegment(guest: address, length: count) { base, length, _ in
            out.append(contentsOf: UnsafeRawBufferPointer(start: base, count: length))
            return true
        }
        precondition(ok, "driver bug: read outside guest memory")
        return out
    }

    public func fill(_ address: UInt64, count: Int, with byte: UInt8) {
        let ok = guestMemory.forEachSegment(guest: address, length: count) { base, length, _ in
            base.initializeMemory(as: UInt8.self, repeating: byte, count: length)
            return true
        }
        precondition(ok, "driver bug: fill outside guest memory")
    }

    /// Stores a little-endian integer (virtio 1.x fields are little-endian).
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) {
        pointer(address, length: MemoryLayout<T>.size).storeBytes(of: value.littleEndian, as: T.self)
    }

    public func load<T: FixedWidthInteger>(_: T.Type = T.self, at address: UInt64) -> T {
        T(littleEndian: pointer(address, length: MemoryLayout<T>.size).loadUnaligned(as: T.self))
    }

    /// A release store of a 16-bit ring index (what a driver does to publish).
    public func storeRelease(_ value: UInt16, at address: UInt64) {
        CVhostShims_store_release_u16(pointer(address, length: 2), value.littleEndian)
    }

    /// An acquire load of a 16-bit ring index.
    public func loadAcquire(at address: UInt64) -> UInt16 {
        UInt16(littleEndian: CVhostShims_load_acquire_u16(pointer(address, length: 2)))
    }

    public func fullFence() { CVhostShims_fence_seq_cst() }

    /// Allocates `length` bytes of guest memory (zeroed), aligned to `alignment`, from the
    /// regions in guest address order. A bump allocator: nothing is ever freed.
    public func allocate(_ length: Int, alignment: Int = 16) -> UInt64 {
        precondition(length > 0 && alignment > 0 && alignment & (alignment - 1) == 0)
        while allocationRegion < allocationOrder.count {
            let region = regions[allocationOrder[allocationRegion]]
            let a = UInt64(alignment)
            let start = (region.guestPhysicalAddress + allocationOffset + a - 1) & ~(a - 1)
            if start + UInt64(length) <= region.guestPhysicalAddress + region.size {
                allocationOffset = start + UInt64(length) - region.guestPhysicalAddress
                fill(start, count: length, with: 0)
                return start
            }
            allocationRegion += 1
            allocationOffset = 0
        }
        preconditionFailure("driver bug: guest memory exhausted allocating \(length) bytes")
    }

    /// Allocates a buffer holding `bytes`.
    public func allocate(copying bytes: [UInt8], alignment: Int = 16) -> UInt64 {
        let address = allocate(max(bytes.count, 1), alignment: alignment)
        write(bytes, at: address)
        return address
    }
}
