import Glibc
import VirtioCore
import VhostUserProtocol

/// One region of guest RAM mapped from the fd the frontend sent. Unmapped when the last
/// `GuestMemory` snapshot using it goes away.
final class RegionMapping: @unchecked Sendable {
    // @unchecked: immutable after init.
    let description: MemoryRegionDescription
    let mapping: UnsafeMutableRawPointer
    let mappingLength: Int

    /// Maps `description` from `fd` (which stays owned by the caller).
    init(_ description: MemoryRegionDescription, fd: Int32) throws(SystemError) {
        // Map from offset 0 so mmap's page alignment rule never bites, then skip to the region.
        let (length, overflow) = description.mmapOffset.addingReportingOverflow(description.size)
        guard !overflow, length <= UInt64(Int.max) else {
            throw SystemError(errno: EINVAL, "memory region too large")
        }
        var st = stat()
        // Touching a mapping past the end of its file raises SIGBUS: refuse such a region up front.
        if fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, UInt64(st.st_size) < length {
            throw SystemError(errno: EINVAL, "memory region ends past the end of its file (\(st.st_size) bytes)")
        }
        Self.sealAgainstShrinking(fd)
        let p = mmap(nil, Int(length), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0)
        guard let p, p != MAP_FAILED else {
            throw SystemError(errno: errno, "mmap of \(length) bytes")
        }
        self.description = description
        self.mapping = p
        self.mappingLength = Int(length)
    }

    /// A frontend that shrank the file after this check would turn our next touch of the cut
    /// pages into SIGBUS. Where the file allows it, seal it against shrinking: a memfd made with
    /// MFD_ALLOW_SEALING (QEMU's memory-backend-memfd; its default seal=on has sealed it already).
    /// Other files (hugetlbfs, /dev/shm) cannot be sealed (README, "Guest memory").
    /// Growing and punching holes stay allowed: neither takes a mapped page away.
    static func sealAgainstShrinking(_ fd: Int32) {
        let addSeals: Int32 = 1033, sealShrink: Int32 = 0x0002  // F_ADD_SEALS, F_SEAL_SHRINK (fcntl(2))
        _ = fcntl(fd, addSeals, sealShrink)  // EINVAL: not a memfd; EPERM: sealing itself is sealed
    }

    var region: GuestMemoryRegion {
        GuestMemoryRegion(guestPhysicalAddress: description.guestPhysicalAddress, size: description.size,
                          frontendVirtualAddress: description.userAddress,
                          hostAddress: UInt(bitPattern: mapping) + UInt(description.mmapOffset))
    }

    deinit { munmap(mapping, mappingLength) }
}

/// The current memory table of a connection: the mappings and the snapshot made of them.
struct MemoryTableState {
    private(set) var mappings: [RegionMapping] = []
    private(set) var memory: GuestMemory = .empty

    /// Replaces the whole table (SET_MEM_TABLE).
    mutating func replace(with table: MemoryTable, fds: [Int32]) throws(SystemError) {
        var mapped: [RegionMapping] = []
        for (region, fd) in zip(table.regions, fds) {
            mapped.append(try RegionMapping(region, fd: fd))
        }
        set(mapped)
    }

    /// Adds one region (ADD_MEM_REG); refuses one that overlaps an existing region.
    mutating func add(_ description: MemoryRegionDescription, fd: Int32) throws(SystemError) {
        if mappings.contains(where: { $0.description.overlaps(description) }) {
            throw SystemError(errno: EINVAL, "ADD_MEM_REG: region overlaps an existing one")
        }
        let mapping = try RegionMapping(description, fd: fd)
        set(mappings + [mapping])
    }

    /// Removes the region matching guest address, size and frontend address (REM_MEM_REG).
    mutating func remove(_ description: MemoryRegionDescription) -> Bool {
        guard let index = mappings.firstIndex(where: {
            $0.description.guestPhysicalAddress == description.guestPhysicalAddress
                && $0.description.size == description.size
                && $0.description.userAddress == description.userAddress
        }) else { return false }
        var remaining = mappings
        remaining.remove(at: index)
        set(remaining)
        return true
    }

    /// The table as it would be without the region matching `description`.
    func removing(_ description: MemoryRegionDescription) -> GuestMemory {
        let kept = mappings.filter {
            !($0.description.guestPhysicalAddress == description.guestPhysicalAddress
                && $0.description.size == description.size
                && $0.description.userAddress == description.userAddress)
        }
        return GuestMemory(regions: kept.map(\.region), owner: kept as AnyObject)
    }

    mutating func clear() { set([]) }

    var count: Int { mappings.count }

    private mutating func set(_ mapped: [RegionMapping]) {
        mappings = mapped
        memory = mapped.isEmpty ? .empty : GuestMemory(regions: mapped.map(\.region), owner: mapped as AnyObject)
    }
}
