import SCSICore

/// One logical unit the guest can address: where the guest sees it, the LUN number at the
/// backend (the iSCSI target's LUN) and a backend id that is never reused, so the sessions,
/// request slots and in-flight commands of a removed unit are never taken for those of a
/// later unit at the same address.
public struct LogicalUnit: Sendable, Hashable, CustomStringConvertible {
    /// Stable for the device's lifetime. The units given at startup get 0, 1, ... in order;
    /// each unit added later the next number.
    public let id: Int
    public let address: VirtioSCSIAddress
    public let backendLUN: UInt16

    public init(id: Int, address: VirtioSCSIAddress, backendLUN: UInt16) {
        self.id = id
        self.address = address
        self.backendLUN = backendLUN
    }

    public var description: String { "\(address) (backend LUN \(backendLUN), id \(id))" }
}

/// Why a change to the LUN map was refused. One line each, for a control socket's answer.
public enum LUNMapError: Error, Equatable, CustomStringConvertible {
    case addressInUse(VirtioSCSIAddress)
    case noSuchLUN(VirtioSCSIAddress)
    /// virtio-scsi carries 14-bit LUNs (SAM flat addressing, virtio v1.2 §5.6.6.1).
    case lunOutOfRange(VirtioSCSIAddress)

    public var description: String {
        switch self {
        case .addressInUse(let a): return "LUN \(a) is already configured"
        case .noSuchLUN(let a): return "LUN \(a) is not configured"
        case .lunOutOfRange(let a): return "LUN \(a): LUN numbers go up to \(LUNMap.maxLUN)"
        }
    }
}

/// Which guest addresses (target, LUN) are backed by which logical unit. A value: the device
/// keeps the current one behind a lock and hands each queue its own copy (Docs/HOTPLUG.md).
public struct LUNMap: Sendable {
    public static let maxLUN: UInt16 = 0x3FFF

    private var byAddress: [VirtioSCSIAddress: LogicalUnit] = [:]
    /// The id the next unit added gets; also one more than the largest id ever given.
    public private(set) var nextID = 0
    /// Bumped by every change, so a queue that gets two maps out of order keeps the newer.
    public private(set) var version = 0
    /// The lookup index of the request path, rebuilt on every change (changes are rare, lookups
    /// are per request): per target, its units ordered by LUN, found without hashing. Also the
    /// source of the per-target and ordered views below.
    @usableFromInline private(set) var index = LookupIndex()

    /// `units[i]` becomes the unit with id `i`.
    public init(_ units: [(address: VirtioSCSIAddress, backendLUN: UInt16)]) {
        for unit in units { insert(LogicalUnit(id: nextID, address: unit.address, backendLUN: unit.backendLUN)) }
        index = LookupIndex(byAddress.values)
        version = 0
    }

    /// Every unit, ordered by target and LUN.
    public var units: [LogicalUnit] { index.unitsOfTarget.flatMap { $0 } }

    public var count: Int { byAddress.count }

    public func unit(at address: VirtioSCSIAddress) -> LogicalUnit? { byAddress[address] }

    /// Whether any unit is on `target` (a target with none answers BAD_TARGET).
    public func hasTarget(_ target: UInt8) -> Bool { !index.unitsOfTarget[Int(target)].isEmpty }

    /// What the guest finds at `address`, in one step: the request path's lookup.
    public enum Lookup: Equatable {
        /// No unit on the target at all: VIRTIO_SCSI_S_BAD_TARGET.
        case noTarget
        /// The target exists but not this LUN (LOGICAL UNIT NOT SUPPORTED, REPORT LUNS).
        case noUnit
        case unit(LogicalUnit)
    }

    @inlinable
    public func lookup(_ address: VirtioSCSIAddress) -> Lookup { index.lookup(address) }

    /// The LUNs configured on `target`, ascending.
    public func luns(of target: UInt8) -> [UInt16] { index.unitsOfTarget[Int(target)].map(\.address.lun) }

    /// Adds a unit at `address` with the next id.
    @discardableResult
    public mutating func add(address: VirtioSCSIAddress, backendLUN: UInt16) throws(LUNMapError) -> LogicalUnit {
        let id = try reserveID(for: address)
        return try add(id: id, address: address, backendLUN: backendLUN)
    }

    /// Checks that a unit can be added at `address` and takes an id for it, without adding
    /// it yet (see `add(id:address:backendLUN:)`). An id taken and never used is just skipped.
    public mutating func reserveID(for address: VirtioSCSIAddress) throws(LUNMapError) -> Int {
        guard address.lun <= Self.maxLUN else { throw .lunOutOfRange(address) }
        guard byAddress[address] == nil else { throw .addressInUse(address) }
        nextID += 1
        return nextID - 1
    }

    /// Adds a unit with an id from `reserveID(for:)`.
    @discardableResult
    public mutating func add(id: Int, address: VirtioSCSIAddress, backendLUN: UInt16) throws(LUNMapError) -> LogicalUnit {
        precondition(id < nextID, "unit ids come from reserveID(for:)")
        guard address.lun <= Self.maxLUN else { throw .lunOutOfRange(address) }
        guard byAddress[address] == nil else { throw .addressInUse(address) }
        let unit = LogicalUnit(id: id, address: address, backendLUN: backendLUN)
        insert(unit)
        index = LookupIndex(byAddress.values)
        return unit
    }

    /// Removes the unit at `address`; its id is never given again.
    @discardableResult
    public mutating func remove(address: VirtioSCSIAddress) throws(LUNMapError) -> LogicalUnit {
        guard let unit = byAddress.removeValue(forKey: address) else { throw .noSuchLUN(address) }
        version += 1
        index = LookupIndex(byAddress.values)
        return unit
    }

    private mutating func insert(_ unit: LogicalUnit) {
        // Only the startup list can name an address twice: the later entry wins.
        byAddress[unit.address] = unit
        nextID = max(nextID, unit.id + 1)
        version += 1
    }
}

/// Units by target without hashing: a 256-entry table from target to its units, each list
/// ordered by LUN and searched linearly while short (a few LUNs per target is the rule) and by
/// bisection when long. Replaces two dictionary lookups per request (about 250 instructions
/// measured with callgrind).
@usableFromInline
struct LookupIndex: Sendable {
    /// `unitsOfTarget[target]`: empty for a target without units.
    @usableFromInline let unitsOfTarget: [[LogicalUnit]]

    init() { unitsOfTarget = Array(repeating: [], count: 256) }

    init(_ units: some Sequence<LogicalUnit>) {
        var table: [[LogicalUnit]] = Array(repeating: [], count: 256)
        for unit in units { table[Int(unit.address.target)].append(unit) }
        for target in table.indices where table[target].count > 1 { table[target].sort { $0.address.lun < $1.address.lun } }
        unitsOfTarget = table
    }

    @inlinable
    func lookup(_ address: VirtioSCSIAddress) -> LUNMap.Lookup {
        let units = unitsOfTarget[Int(address.target)]
        if units.isEmpty { return .noTarget }
        if units.count <= 16 {
            for unit in units where unit.address.lun == address.lun { return .unit(unit) }
            return .noUnit
        }
        var low = 0
        var high = units.count
        while low < high {
            let middle = (low + high) / 2
            if units[middle].address.lun < address.lun { low = middle + 1 } else { high = middle }
        }
        return low < units.count && units[low].address.lun == address.lun ? .unit(units[low]) : .noUnit
    }
}

/// Answers the commands the server answers itself, from the configuration.
public enum LocalResponses {
    /// REPORT LUNS parameter data (SPC-4 §6.33): a header and one 8-byte LUN per entry, in
    /// single-level peripheral (LUN < 256) or flat (LUN < 16384) addressing (SAM-5 §4.7).
    public static func reportLUNs(_ luns: [UInt16]) -> [UInt8] {
        var data = [UInt8](repeating: 0, count: 8 + 8 * luns.count)
        let listLength = UInt32(8 * luns.count)
        data[0] = UInt8(listLength >> 24)
        data[1] = UInt8((listLength >> 16) & 0xFF)
        data[2] = UInt8((listLength >> 8) & 0xFF)
        data[3] = UInt8(listLength & 0xFF)
        for (i, lun) in luns.enumerated() {
            data[8 + 8 * i] = lun < 256 ? 0 : UInt8(0x40 | (lun >> 8))
            data[8 + 8 * i + 1] = UInt8(lun & 0xFF)
        }
        return data
    }

    /// Standard INQUIRY data for a LUN that is not configured (SPC-4 §6.6.2): peripheral
    /// qualifier 011b ("not capable of supporting a device"), device type 1Fh.
    public static func inquiryForUnsupportedLUN(evpd: Bool, pageCode: UInt8) -> [UInt8] {
        if evpd { return [0x7F, pageCode, 0, 0] }
        var data = [UInt8](repeating: 0x20, count: 36)  // spaces for the ASCII fields
        data[0] = 0x7F
        data[1] = 0
        data[2] = 0x06       // SPC-4
        data[3] = 0x02       // response data format 2
        data[4] = 31         // additional length
        data[5] = 0; data[6] = 0; data[7] = 0
        return data
    }

    /// The allocation length field of a CDB (big-endian), for the commands answered locally.
    public static func allocationLength(cdb: UnsafeRawBufferPointer) -> Int {
        switch cdb[0] {
        case SCSIOpcode.reportLUNs:   // bytes 6-9
            return Int(cdb[6]) << 24 | Int(cdb[7]) << 16 | Int(cdb[8]) << 8 | Int(cdb[9])
        case SCSIOpcode.inquiry:      // bytes 3-4
            return Int(cdb[3]) << 8 | Int(cdb[4])
        case SCSIOpcode.requestSense: // byte 4
            return Int(cdb[4])
        default:
            return 0
        }
    }
}
