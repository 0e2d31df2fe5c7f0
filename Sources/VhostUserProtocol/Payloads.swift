/// VhostUserVringState: a ring index and a number (vhost-user spec, "A vring state description").
public struct VringState: Sendable, Equatable {
    public static let byteCount = 8
    public var index: UInt32
    public var num: UInt32
    public init(index: UInt32, num: UInt32) { self.index = index; self.num = num }

    public init(decoding bytes: [UInt8]) {
        var r = PayloadReader(bytes)
        index = r.read()
        num = r.read()
    }

    public func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.appendUnaligned(index)
        b.appendUnaligned(num)
        return b
    }
}

/// VhostUserVringAddr (vhost-user spec, "A vring address description"). Addresses are the
/// frontend's virtual addresses unless an IOMMU is in use; `log` is a guest physical address.
public struct VringAddress: Sendable, Equatable {
    public static let byteCount = 40
    /// VHOST_VRING_F_LOG: log used-ring writes at `log`.
    public static let flagLog: UInt32 = 1

    public var index: UInt32
    public var flags: UInt32
    public var descriptorTable: UInt64
    public var usedRing: UInt64
    public var availRing: UInt64
    public var log: UInt64

    public init(index: UInt32, flags: UInt32, descriptorTable: UInt64, usedRing: UInt64, availRing: UInt64, log: UInt64) {
        self.index = index
        self.flags = flags
        self.descriptorTable = descriptorTable
        self.usedRing = usedRing
        self.availRing = availRing
        self.log = log
    }

    public init(decoding bytes: [UInt8]) {
        var r = PayloadReader(bytes)
        index = r.read()
        flags = r.read()
        descriptorTable = r.read()
        usedRing = r.read()
        availRing = r.read()
        log = r.read()
    }

    public func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.appendUnaligned(index)
        b.appendUnaligned(flags)
        b.appendUnaligned(descriptorTable)
        b.appendUnaligned(usedRing)
        b.appendUnaligned(availRing)
        b.appendUnaligned(log)
        return b
    }

    /// Alignment the split ring layout requires (virtio v1.2 §2.7): 16, 2 and 4 bytes.
    public var alignmentError: String? {
        if flags & ~Self.flagLog != 0 { return "unknown vring address flags 0x\(String(flags, radix: 16))" }
        if descriptorTable % 16 != 0 { return "descriptor table address is not 16-byte aligned" }
        if availRing % 2 != 0 { return "avail ring address is not 2-byte aligned" }
        if usedRing % 4 != 0 { return "used ring address is not 4-byte aligned" }
        return nil
    }
}

/// VhostUserMemoryRegion (vhost-user spec, "Memory region description").
public struct MemoryRegionDescription: Sendable, Equatable {
    public static let byteCount = 32
    public var guestPhysicalAddress: UInt64
    public var size: UInt64
    public var userAddress: UInt64
    public var mmapOffset: UInt64

    public init(guestPhysicalAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) {
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.userAddress = userAddress
        self.mmapOffset = mmapOffset
    }

    init(reading r: inout PayloadReader) {
        guestPhysicalAddress = r.read()
        size = r.read()
        userAddress = r.read()
        mmapOffset = r.read()
    }

    func encode(into b: inout [UInt8]) {
        b.appendUnaligned(guestPhysicalAddress)
        b.appendUnaligned(size)
        b.appendUnaligned(userAddress)
        b.appendUnaligned(mmapOffset)
    }

    /// Checks that need no context: non-empty and no address wrap-around.
    public var validationError: String? {
        if size == 0 { return "memory region of size 0" }
        if guestPhysicalAddress.addingReportingOverflow(size).overflow { return "memory region wraps the guest address space" }
        if userAddress.addingReportingOverflow(size).overflow { return "memory region wraps the frontend address space" }
        if mmapOffset.addingReportingOverflow(size).overflow || mmapOffset > UInt64(Int64.max) {
            return "memory region mmap offset out of range"
        }
        return nil
    }

    public func overlaps(_ other: MemoryRegionDescription) -> Bool {
        guestPhysicalAddress < other.guestPhysicalAddress &+ other.size
            && other.guestPhysicalAddress < guestPhysicalAddress &+ size
    }
}

/// VhostUserMemory: SET_MEM_TABLE's payload, up to 8 regions, one fd each.
public struct MemoryTable: Sendable, Equatable {
    public static let maxRegions = 8
    public var regions: [MemoryRegionDescription]

    public init(regions: [MemoryRegionDescription]) { self.regions = regions }

    public static func payloadSize(regionCount: Int) -> Int { 8 + MemoryRegionDescription.byteCount * regionCount }

    /// Decodes and validates; `fdCount` must equal the region count.
    public init(decoding bytes: [UInt8], fdCount: Int) throws(VhostUserProtocolError) {
        guard bytes.count >= 8 else {
            throw .wrongPayloadSize(request: "SET_MEM_TABLE", expected: ">= 8", got: bytes.count)
        }
        var r = PayloadReader(bytes)
        let count: UInt32 = r.read()
        _ = r.read(UInt32.self)  // padding
        guard count >= 1, count <= UInt32(Self.maxRegions) else {
            throw .invalid("SET_MEM_TABLE: \(count) regions, expected 1...\(Self.maxRegions)")
        }
        // QEMU sends the full 8-region array; accept exactly the used part or the whole array.
        guard bytes.count >= Self.payloadSize(regionCount: Int(count)),
              bytes.count <= Self.payloadSize(regionCount: Self.maxRegions) else {
            throw .wrongPayloadSize(request: "SET_MEM_TABLE", expected: "\(Self.payloadSize(regionCount: Int(count)))",
                                    got: bytes.count)
        }
        guard fdCount == Int(count) else {
            throw .wrongFileDescriptorCount(request: "SET_MEM_TABLE", expected: "\(count)", got: fdCount)
        }
        var regions: [MemoryRegionDescription] = []
        for _ in 0..<count {
            let region = MemoryRegionDescription(reading: &r)
            if let why = region.validationError { throw .invalid("SET_MEM_TABLE: \(why)") }
            if regions.contains(where: { $0.overlaps(region) }) { throw .invalid("SET_MEM_TABLE: regions overlap") }
            regions.append(region)
        }
        self.regions = regions
    }

    public func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.appendUnaligned(UInt32(regions.count))
        b.appendUnaligned(UInt32(0))
        for region in regions { region.encode(into: &b) }
        return b
    }
}

/// VhostUserSingleMemReg: ADD_MEM_REG / REM_MEM_REG payload (u64 padding, then a region).
public struct SingleMemoryRegion: Sendable, Equatable {
    public static let byteCount = 40
    public var region: MemoryRegionDescription

    public init(region: MemoryRegionDescription) { self.region = region }

    public init(decoding bytes: [UInt8], request: String) throws(VhostUserProtocolError) {
        guard bytes.count == Self.byteCount else {
            throw .wrongPayloadSize(request: request, expected: "\(Self.byteCount)", got: bytes.count)
        }
        var r = PayloadReader(bytes)
        _ = r.read(UInt64.self)
        region = MemoryRegionDescription(reading: &r)
        if let why = region.validationError { throw .invalid("\(request): \(why)") }
    }

    public func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.appendUnaligned(UInt64(0))
        region.encode(into: &b)
        return b
    }
}
