/// virtio-scsi wire format (virtio v1.2 §5.6). All multi-byte fields are little-endian.

/// Sizes QEMU's vhost-user-scsi front-end configures (virtio_scsi_config cdb_size and
/// sense_size); QEMU exits if the guest changes them, so the backend may rely on them.
public enum VirtioSCSIConfig {
    public static let cdbSize = 32
    public static let senseSize = 96
}

/// The response codes of virtio v1.2 §5.6.6.1 and §5.6.6.2.
public enum VirtioSCSIResponse: UInt8, Sendable {
    case ok = 0                 // VIRTIO_SCSI_S_OK, also VIRTIO_SCSI_S_FUNCTION_COMPLETE
    case overrun = 1
    case aborted = 2
    case badTarget = 3
    case reset = 4
    case busy = 5
    case transportFailure = 6
    case targetFailure = 7
    case nexusFailure = 8
    case failure = 9
    case functionSucceeded = 10
    case functionRejected = 11
    case incorrectLUN = 12

    public static let functionComplete = VirtioSCSIResponse.ok
}

/// The 8-byte LUN field (virtio v1.2 §5.6.6.1): byte 0 is 1, byte 1 the target, bytes 2-3
/// the LUN in SAM flat or peripheral addressing, bytes 4-7 zero.
public struct VirtioSCSIAddress: Hashable, Sendable, CustomStringConvertible {
    public var target: UInt8
    public var lun: UInt16

    public init(target: UInt8, lun: UInt16) {
        self.target = target
        self.lun = lun
    }

    /// Nil when the field does not address a target at all (byte 0 is not 1).
    public init?(lunField b: UnsafeRawBufferPointer) {
        guard b.count >= 8, b[0] == 1 else { return nil }
        target = b[1]
        // The address method bits (0x40 flat) are masked off, as the Linux driver and QEMU do.
        lun = (UInt16(b[2]) << 8 | UInt16(b[3])) & 0x3FFF
    }

    public var lunField: [UInt8] {
        [1, target, UInt8(lun >> 8) | 0x40, UInt8(lun & 0xFF), 0, 0, 0, 0]
    }

    /// The LUN field of an event (virtio v1.2 §5.6.6.3) in the encoding REPORT LUNS uses:
    /// peripheral below 256, flat from 256 (as QEMU sends it). Linux takes bytes 2-3 as the
    /// LUN number its scan would have found; with the flat bit on LUN 3 it would add a
    /// phantom LUN 0x4003 instead of LUN 3.
    public var eventLUNField: [UInt8] {
        [1, target, lun < 256 ? 0 : UInt8(lun >> 8) | 0x40, UInt8(lun & 0xFF), 0, 0, 0, 0]
    }

    public var description: String { "\(target):\(lun)" }
}

/// virtio_scsi_req_cmd's device-readable header.
public struct VirtioSCSICommandHeader: Sendable {
    public static let byteCount = 19 + VirtioSCSIConfig.cdbSize   // lun[8] id tag prio crn cdb[32]

    public var lunField: (UInt64)
    public var id: UInt64
    public var taskAttribute: UInt8
    public var priority: UInt8
    public var crn: UInt8

    /// Reads the fixed fields; the CDB stays at `cdbOffset` in `bytes`.
    public init(_ bytes: UnsafeRawBufferPointer) {
        lunField = bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
        id = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        taskAttribute = bytes[16]
        priority = bytes[17]
        crn = bytes[18]
    }

    public static let cdbOffset = 19
}

/// virtio_scsi_resp_cmd's device-writable header (sense buffer included).
public enum VirtioSCSICommandResponse {
    public static let byteCount = 12 + VirtioSCSIConfig.senseSize

    /// Encodes the header into `into` (exactly `byteCount` bytes). `sense` is clamped to the
    /// sense buffer size; the result's sense_len tells how much was kept.
    public static func encode(response: VirtioSCSIResponse, status: UInt8, residual: UInt32,
                              sense: UnsafeRawBufferPointer, into header: UnsafeMutableRawBufferPointer) {
        let senseLength = min(sense.count, VirtioSCSIConfig.senseSize)
        header.storeBytes(of: UInt32(senseLength).littleEndian, toByteOffset: 0, as: UInt32.self)
        header.storeBytes(of: residual.littleEndian, toByteOffset: 4, as: UInt32.self)
        header.storeBytes(of: UInt16(0), toByteOffset: 8, as: UInt16.self)  // status_qualifier
        header[10] = status
        header[11] = response.rawValue
        if senseLength > 0, let base = sense.baseAddress {
            (header.baseAddress! + 12).copyMemory(from: base, byteCount: senseLength)
        }
        if senseLength < VirtioSCSIConfig.senseSize {
            (header.baseAddress! + 12 + senseLength).initializeMemory(as: UInt8.self, repeating: 0,
                                                                       count: VirtioSCSIConfig.senseSize - senseLength)
        }
    }
}

/// Control queue requests (virtio v1.2 §5.6.6.2).
public enum VirtioSCSIControlType: UInt32 {
    case taskManagement = 0      // VIRTIO_SCSI_T_TMF
    case asyncNotificationQuery = 1     // VIRTIO_SCSI_T_AN_QUERY
    case asyncNotificationSubscribe = 2 // VIRTIO_SCSI_T_AN_SUBSCRIBE
}

/// VIRTIO_SCSI_T_TMF_* subtypes.
public enum VirtioSCSITMFSubtype: UInt32, Sendable {
    case abortTask = 0
    case abortTaskSet = 1
    case clearACA = 2
    case clearTaskSet = 3
    case itNexusReset = 4
    case logicalUnitReset = 5
    case queryTask = 6
    case queryTaskSet = 7
}

/// virtio_scsi_ctrl_tmf_req: type, subtype, lun[8], id. Response: one byte.
public struct VirtioSCSITMFRequest: Sendable {
    public static let byteCount = 24
    public static let responseByteCount = 1
    public var subtype: UInt32
    public var address: VirtioSCSIAddress?
    public var id: UInt64

    public init(_ bytes: UnsafeRawBufferPointer) {
        subtype = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        address = VirtioSCSIAddress(lunField: UnsafeRawBufferPointer(rebasing: bytes[8..<16]))
        id = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
    }
}

/// virtio_scsi_ctrl_an_req: type, lun[8], event_requested. Response: event_actual, response.
public enum VirtioSCSIANRequest {
    public static let byteCount = 16
    public static let responseByteCount = 5
}

/// virtio_scsi_event (virtio v1.2 §5.6.6.3).
public struct VirtioSCSIEvent: Sendable, Equatable {
    public static let byteCount = 16
    public static let noEvent: UInt32 = 0
    public static let transportReset: UInt32 = 1
    public static let asyncNotify: UInt32 = 2
    public static let paramChange: UInt32 = 3
    /// Or'ed into `event` when the device had to drop events for lack of buffers.
    public static let eventsMissed: UInt32 = 0x8000_0000
    /// `reason` of a transport reset: VIRTIO_SCSI_EVT_RESET_RESCAN (a LUN appeared; Linux
    /// calls scsi_add_device) and VIRTIO_SCSI_EVT_RESET_REMOVED (scsi_remove_device).
    public static let resetRescan: UInt32 = 1
    public static let resetRemoved: UInt32 = 2

    /// `reason` of a parameter change: the sense code of the unit attention it stands for,
    /// ASC | ASCQ << 8. Linux rescans the device for ASC 2Ah with ASCQ 00h, 01h or 09h.
    public static func parameterChangeReason(asc: UInt8, ascq: UInt8) -> UInt32 { UInt32(asc) | UInt32(ascq) << 8 }
    /// CAPACITY DATA HAS CHANGED (SPC-4 Annex F: ASC 2Ah, ASCQ 09h).
    public static let capacityDataChanged = parameterChangeReason(asc: 0x2A, ascq: 0x09)

    public var event: UInt32
    public var address: VirtioSCSIAddress
    public var reason: UInt32

    public init(event: UInt32, address: VirtioSCSIAddress, reason: UInt32) {
        self.event = event
        self.address = address
        self.reason = reason
    }

    public func encoded() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.byteCount)
        b.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: event.littleEndian, toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: reason.littleEndian, toByteOffset: 12, as: UInt32.self)
        }
        b.replaceSubrange(4..<12, with: address.eventLUNField)
        return b
    }
}
