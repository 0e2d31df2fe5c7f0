/// Front-end → back-end request codes (vhost-user spec, "Front-end message types").
public enum VhostUserRequest: UInt32, Sendable, CaseIterable {
    case getFeatures = 1             // VHOST_USER_GET_FEATURES
    case setFeatures = 2             // VHOST_USER_SET_FEATURES
    case setOwner = 3                // VHOST_USER_SET_OWNER
    case resetOwner = 4              // VHOST_USER_RESET_OWNER (deprecated)
    case setMemTable = 5             // VHOST_USER_SET_MEM_TABLE
    case setLogBase = 6              // VHOST_USER_SET_LOG_BASE
    case setLogFD = 7                // VHOST_USER_SET_LOG_FD
    case setVringNum = 8             // VHOST_USER_SET_VRING_NUM
    case setVringAddr = 9            // VHOST_USER_SET_VRING_ADDR
    case setVringBase = 10           // VHOST_USER_SET_VRING_BASE
    case getVringBase = 11           // VHOST_USER_GET_VRING_BASE
    case setVringKick = 12           // VHOST_USER_SET_VRING_KICK
    case setVringCall = 13           // VHOST_USER_SET_VRING_CALL
    case setVringErr = 14            // VHOST_USER_SET_VRING_ERR
    case getProtocolFeatures = 15    // VHOST_USER_GET_PROTOCOL_FEATURES
    case setProtocolFeatures = 16    // VHOST_USER_SET_PROTOCOL_FEATURES
    case getQueueNum = 17            // VHOST_USER_GET_QUEUE_NUM
    case setVringEnable = 18         // VHOST_USER_SET_VRING_ENABLE
    case sendRARP = 19               // VHOST_USER_SEND_RARP
    case netSetMTU = 20              // VHOST_USER_NET_SET_MTU
    case setBackendReqFD = 21        // VHOST_USER_SET_BACKEND_REQ_FD
    case iotlbMsg = 22               // VHOST_USER_IOTLB_MSG
    case setVringEndian = 23         // VHOST_USER_SET_VRING_ENDIAN
    case getConfig = 24              // VHOST_USER_GET_CONFIG
    case setConfig = 25              // VHOST_USER_SET_CONFIG
    case getInflightFD = 31          // VHOST_USER_GET_INFLIGHT_FD
    case setInflightFD = 32          // VHOST_USER_SET_INFLIGHT_FD
    case resetDevice = 34            // VHOST_USER_RESET_DEVICE
    case getMaxMemSlots = 36         // VHOST_USER_GET_MAX_MEM_SLOTS
    case addMemReg = 37              // VHOST_USER_ADD_MEM_REG
    case remMemReg = 38              // VHOST_USER_REM_MEM_REG
    case setStatus = 39              // VHOST_USER_SET_STATUS
    case getStatus = 40              // VHOST_USER_GET_STATUS
}

/// Protocol feature bits (vhost-user spec, "Protocol features").
public struct VhostUserProtocolFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    init(bit: Int) { rawValue = 1 << UInt64(bit) }

    public static let mq = VhostUserProtocolFeatures(bit: 0)
    public static let logSHMFD = VhostUserProtocolFeatures(bit: 1)
    public static let replyAck = VhostUserProtocolFeatures(bit: 3)
    public static let backendReq = VhostUserProtocolFeatures(bit: 5)
    public static let config = VhostUserProtocolFeatures(bit: 9)
    public static let inflightSHMFD = VhostUserProtocolFeatures(bit: 12)
    public static let resetDevice = VhostUserProtocolFeatures(bit: 13)
    public static let configureMemSlots = VhostUserProtocolFeatures(bit: 15)
    public static let status = VhostUserProtocolFeatures(bit: 16)

    public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// Header flags (vhost-user spec, "Header"): bits 0-1 version, bit 2 reply, bit 3 need-reply.
public struct VhostUserHeaderFlags: OptionSet, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let version1 = VhostUserHeaderFlags(rawValue: 0x1)
    public static let reply = VhostUserHeaderFlags(rawValue: 0x4)
    public static let needReply = VhostUserHeaderFlags(rawValue: 0x8)
    public static let versionMask: UInt32 = 0x3
}
