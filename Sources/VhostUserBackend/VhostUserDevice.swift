import Dispatch
import Glibc
import ServerLog
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

    /// The frontend's connection is closed and every ring is stopped: release what was
    /// held for it (the SCSI device logs out of its targets).
    func frontendDisconnected()
}

/// A started ring, handed to the device. Confined to the device's queue for this ring.
///
/// Its mutable fields live in a struct behind a pointer held in a `let` (`mutable`): Swift
/// checks exclusive access to a class's stored `var`s at run time (~75 instructions per
/// access), and for public ones always, since other modules may touch them; the request path
/// reads and changes these several times per request. Access through the pointer is not
/// checked, which is safe because the ring is confined to `queue` and the accessors below are
/// plain get/set: no `inout` access to a field is ever held across another.
public final class Vring: @unchecked Sendable {
    // @unchecked: confined to `queue` (the device's queue for this ring index).
    public let index: Int
    public let queue: DispatchQueue
    public let negotiatedFeatures: VirtioFeatures
    let notifier: CallNotifier

    /// Inflight tracking (INFLIGHT_SHMFD), when the frontend gave a region for this ring.
    let inflight: UnsafeInflightQueue?
    /// Heads that were in flight when the previous server died, oldest first: taken again
    /// before anything new (each exactly once).
    private let resubmit: [UInt16]

    private struct Mutable {
        var ring: UnsafeSplitQueue
        var memory: GuestMemory
        var resubmitted = 0
        var inflightCounter: UInt64
        var dirtyLog: DirtyLog?
        var usedRingLogAddress: UInt64?
    }
    private let mutable: UnsafeMutablePointer<Mutable>

    public var ring: UnsafeSplitQueue {
        get { mutable.pointee.ring }
        set { mutable.pointee.ring = newValue }
    }
    /// The memory snapshot `ring`'s pointers and new requests are translated with.
    public internal(set) var memory: GuestMemory {
        get { mutable.pointee.memory }
        set { mutable.pointee.memory = newValue }
    }
    /// The dirty log while the frontend has logging on (VHOST_F_LOG_ALL), else nil.
    public internal(set) var dirtyLog: DirtyLog? {
        get { mutable.pointee.dirtyLog }
        set { mutable.pointee.dirtyLog = newValue }
    }
    /// Guest physical address of the used ring when its writes are to be logged
    /// (VHOST_VRING_F_LOG in SET_VRING_ADDR).
    var usedRingLogAddress: UInt64? {
        get { mutable.pointee.usedRingLogAddress }
        set { mutable.pointee.usedRingLogAddress = newValue }
    }

    init(index: Int, queue: DispatchQueue, ring: UnsafeSplitQueue, memory: GuestMemory,
         negotiatedFeatures: VirtioFeatures, notifier: CallNotifier,
         inflight: UnsafeInflightQueue? = nil, resubmit: [UInt16] = [], inflightCounter: UInt64 = 1) {
        self.index = index
        self.queue = queue
        self.negotiatedFeatures = negotiatedFeatures
        self.notifier = notifier
        self.inflight = inflight
        self.resubmit = resubmit
        mutable = .allocate(capacity: 1)
        mutable.initialize(to: Mutable(ring: ring, memory: memory, inflightCounter: inflightCounter))
    }

    deinit {
        mutable.deinitialize(count: 1)
        mutable.deallocate()
    }

    /// A started ring with no frontend behind it (no inflight region, no call fd yet): for
    /// driving a device in one process, as the micro-benchmark of the request path does.
    public convenience init(index: Int, queue: DispatchQueue, ring: UnsafeSplitQueue, memory: GuestMemory,
                            negotiatedFeatures: VirtioFeatures) {
        self.init(index: index, queue: queue, ring: ring, memory: memory, negotiatedFeatures: negotiatedFeatures,
                  notifier: CallNotifier())
    }

    /// Takes the next request's head: first those resubmitted after a restart, then the
    /// avail ring. Tracked in the inflight region from here until `push`.
    @inline(__always)
    public func pop() throws(UnsafeSplitQueue.RingError) -> UInt16? {
        if mutable.pointee.resubmitted < resubmit.count {
            mutable.pointee.resubmitted += 1
            return resubmit[mutable.pointee.resubmitted - 1]
        }
        guard let head = try mutable.pointee.ring.popAvail() else { return nil }
        if let inflight {
            inflight.taken(head, counter: mutable.pointee.inflightCounter)
            mutable.pointee.inflightCounter &+= 1
        }
        return head
    }

    /// Puts `head` on the used ring and publishes the used index at once, so the inflight
    /// region always tells exactly which requests are done (vhost-user spec, "Inflight I/O
    /// tracking"). The guest is interrupted by `publishUsedAndNotify()`, once per batch.
    @inline(__always)
    public func push(head: UInt16, length: UInt32) {
        mutable.pointee.ring.addUsed(head: head, length: length)
        inflight?.willPublish(head)
        mutable.pointee.ring.publishUsed()
        inflight?.published(head, usedIndex: mutable.pointee.ring.nextUsed)
    }

    /// Publishes the used elements added since the last call, logs the used ring when
    /// migrating, and interrupts the guest if it asked to be (EVENT_IDX), once per batch.
    @inline(__always)
    public func publishUsedAndNotify() {
        mutable.pointee.ring.publishUsed()
        logUsedRing()
        if mutable.pointee.ring.needsNotification() {
            notifier.signal()
        }
    }

    /// `UnsafeSplitQueue.enableKicks` plus logging of the avail_event it writes.
    @inline(__always)
    public func enableKicks() -> Bool {
        let more = mutable.pointee.ring.enableKicks()
        if mutable.pointee.ring.eventIndex { logUsedRing() }
        return more
    }

    /// Marks the device-writable buffers of `chain` in the dirty log: everything the device
    /// may have written into them. Call before the request is pushed to the used ring.
    @inline(__always)
    public func logWrites(to chain: ChainSegmentBuffer, headerBytes: Int) {
        guard let log = dirtyLog else { return }
        var remaining = DebugSwitches.skipDataInLogging ? headerBytes : Int.max
        for i in chain.readableCount..<chain.count where remaining > 0 {
            let segment = chain[i]
            let length = min(segment.length, remaining)
            log.mark(guestAddress: segment.guestAddress, length: length)
            remaining -= length
        }
    }

    @inline(__always)
    func logUsedRing() {
        guard let log = dirtyLog, let address = usedRingLogAddress else { return }
        log.mark(guestAddress: address, length: SplitQueueLayout.usedRingBytes(size: ring.size))
    }
}

/// Switches for tests that prove the tests catch what they exist for. Compiled into debug
/// builds only; a release build ignores the environment.
public enum DebugSwitches {
    /// VUS_DEBUG_SKIP_DATA_IN_LOGGING=1: do not log data-in buffers in the dirty log, the bug
    /// the migration test must catch.
    public static let skipDataInLogging: Bool = {
        #if DEBUG
        let on = getenv("VUS_DEBUG_SKIP_DATA_IN_LOGGING").map { String(cString: $0) == "1" } ?? false
        if on { Log.warning("VUS_DEBUG_SKIP_DATA_IN_LOGGING=1: data-in buffers are NOT logged; migration will corrupt guests") }
        return on
        #else
        return false
        #endif
    }()
}
