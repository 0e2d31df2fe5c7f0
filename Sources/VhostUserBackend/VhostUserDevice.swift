import Dispatch
import VirtioCore
import VhostUserProtocol

/// What a device (virtio-scsi here) plugs into the vhost-user backend.
///
/// Every `Vring` method and every call about vring `i` happens on `dispatchQueue(forVring: i)`,
/// a serial queue the device owns for the server's lifetime.
public protocol VhostUserDevice: AnyObject, Sendable {
    /// Device-type and ring feature bits offered to the frontend (the backend adds its own).
    var virtioFeatures: VirtioFeatures { get }
    /// Number of virtqueues the device supports (answered to GET_QUEUE_NUM).
    var queueCount: Int { get }

    func dispatchQueue(forVring index: Int) -> DispatchQueue

    /// The ring is started and enabled: the device may take requests from it. Holds `vring`
    /// until `stop`'s completion.
    func start(_ vring: Vring)

    /// The driver kicked (or the ring just started): take what is available.
    func kick(_ vring: Vring)

    /// Stop taking requests from the ring and call `drained` (from any queue) once every
    /// request taken from it has been completed and pushed to the used ring.
    func stop(_ vring: Vring, drained: @escaping @Sendable () -> Void)

    /// The drain did not finish in time and the ring has been reported stopped anyway: from
    /// now on nothing may touch this ring or signal the guest for it. Requests still in
    /// flight should be aborted; their completions are dropped.
    func abandon(_ vring: Vring)
}

/// A started ring, handed to the device. Confined to the device's queue for this ring.
public final class Vring: @unchecked Sendable {
    // @unchecked: confined to `queue` (the device's queue for this ring index).
    public let index: Int
    public let queue: DispatchQueue
    public var ring: UnsafeSplitQueue
    /// The memory snapshot `ring`'s pointers and new requests are translated with.
    public internal(set) var memory: GuestMemory
    public let negotiatedFeatures: VirtioFeatures
    let notifier: CallNotifier

    init(index: Int, queue: DispatchQueue, ring: UnsafeSplitQueue, memory: GuestMemory,
         negotiatedFeatures: VirtioFeatures, notifier: CallNotifier) {
        self.index = index
        self.queue = queue
        self.ring = ring
        self.memory = memory
        self.negotiatedFeatures = negotiatedFeatures
        self.notifier = notifier
    }

    /// Publishes the used elements added since the last call and interrupts the guest if it
    /// asked to be (EVENT_IDX), once per batch.
    @inline(__always)
    public func publishUsedAndNotify() {
        ring.publishUsed()
        if ring.needsNotification() {
            notifier.signal()
        }
    }
}
