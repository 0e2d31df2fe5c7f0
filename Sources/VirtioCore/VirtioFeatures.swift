/// Virtio feature bits (virtio v1.2 §6) and the vhost-user ones that share their space.
public struct VirtioFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    init(bit: Int) { rawValue = 1 << UInt64(bit) }

    public static let notifyOnEmpty = VirtioFeatures(bit: 24)     // VIRTIO_F_NOTIFY_ON_EMPTY
    public static let logAll = VirtioFeatures(bit: 26)            // VHOST_F_LOG_ALL
    public static let indirectDescriptors = VirtioFeatures(bit: 28) // VIRTIO_F_INDIRECT_DESC
    public static let eventIndex = VirtioFeatures(bit: 29)        // VIRTIO_F_EVENT_IDX
    public static let protocolFeatures = VirtioFeatures(bit: 30)  // VHOST_USER_F_PROTOCOL_FEATURES
    public static let version1 = VirtioFeatures(bit: 32)          // VIRTIO_F_VERSION_1
    public static let ringPacked = VirtioFeatures(bit: 34)        // VIRTIO_F_RING_PACKED
    public static let inOrder = VirtioFeatures(bit: 35)           // VIRTIO_F_IN_ORDER

    // virtio-scsi (virtio v1.2 §5.6.3)
    public static let scsiInout = VirtioFeatures(bit: 0)          // VIRTIO_SCSI_F_INOUT
    public static let scsiHotplug = VirtioFeatures(bit: 1)        // VIRTIO_SCSI_F_HOTPLUG
    public static let scsiChange = VirtioFeatures(bit: 2)         // VIRTIO_SCSI_F_CHANGE
    public static let scsiT10PI = VirtioFeatures(bit: 3)          // VIRTIO_SCSI_F_T10_PI

    public var description: String { "0x" + String(rawValue, radix: 16) }
}
