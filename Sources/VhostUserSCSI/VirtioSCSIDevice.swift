import Dispatch
import EventPoller
import ServerLog
import ServerMetrics
import Synchronization
import VhostUserBackend
import VirtioCore
import VirtioSCSI

/// The virtio-scsi device behind the vhost-user backend. Virtqueue 0 is the control queue,
/// 1 the event queue and 2... the request queues (virtio v1.2 §5.6.2), each served on its
/// own serial queue that lives as long as the device.
public final class VirtioSCSIDevice: VhostUserDevice {
    public let requestQueueCount: Int
    /// The current LUN map, changed at runtime (VirtioSCSIDevice+LUNs.swift); every queue
    /// worker has its own copy.
    let lunState: Mutex<LUNState>
    private let queues: [DispatchQueue]
    /// One epoll thread per request queue, attached to it: the backend watches the ring's
    /// kick eventfd and the iSCSI sessions their sockets through it, so an event costs one
    /// thread wake-up instead of libdispatch's two (Docs/BENCHMARKS.md). The thread starts
    /// with the first registration.
    private let pollers: [FDPoller]
    let control: ControlQueueWorker
    let events: EventQueueWorker
    let requests: [RequestQueueWorker]

    public init(lunMap: LUNMap, requestQueues: Int, sessionFactory: @escaping SCSISessionFactory) {
        precondition(requestQueues >= 1)
        lunState = Mutex(LUNState(map: lunMap))
        requestQueueCount = requestQueues
        let queues = (0..<(requestQueues + 2)).map { index in
            let name = index == 0 ? "control" : index == 1 ? "event" : "request\(index - 2)"
            return DispatchQueue(label: "virtio-scsi.\(name)", qos: .userInitiated)
        }
        let requests = (0..<requestQueues).map { i in
            RequestQueueWorker(queue: queues[i + 2], lunMap: lunMap, sessionFactory: sessionFactory)
        }
        self.queues = queues
        self.requests = requests
        pollers = (0..<requestQueues).map { i in
            let poller = FDPoller(queue: queues[i + 2], name: "vus-poll-rq\(i)")
            poller.attachToQueue()
            return poller
        }
        control = ControlQueueWorker(queue: queues[0], lunMap: lunMap, requestWorkers: requests)
        events = EventQueueWorker(queue: queues[1])
    }

    /// LUNs added and removed at runtime are reported as transport reset events
    /// (VIRTIO_SCSI_F_HOTPLUG), capacity changes as parameter change events
    /// (VIRTIO_SCSI_F_CHANGE). Bidirectional commands (INOUT) and T10 PI are not supported.
    public var virtioFeatures: VirtioFeatures { [.scsiHotplug, .scsiChange] }

    public var queueCount: Int { requestQueueCount + 2 }

    /// Tags every log line written on this device's queues (its rings, its sessions) with
    /// `metadata`, e.g. the controller's name (`Log.queueContext`).
    public func setLogContext(_ metadata: LogMetadata) {
        for queue in queues { queue.setSpecific(key: Log.queueContext, value: metadata) }
    }

    public func dispatchQueue(forVring index: Int) -> DispatchQueue { queues[index] }

    public func start(_ vring: Vring) {
        switch vring.index {
        case 0: control.start(vring)
        case 1: events.start(vring)
        default: requests[vring.index - 2].start(vring)
        }
    }

    public func kick(_ vring: Vring) {
        switch vring.index {
        case 0: control.kick()
        case 1: events.kick()
        default: requests[vring.index - 2].kick()
        }
    }

    public func stop(_ vring: Vring, drained: @escaping @Sendable () -> Void) {
        switch vring.index {
        case 0: control.stop(drained: drained)
        case 1: events.stop(drained: drained)
        default: requests[vring.index - 2].stop(drained: drained)
        }
    }

    public func abandon(_ vring: Vring) {
        switch vring.index {
        case 0: control.abandon()
        case 1: events.stop(drained: {})
        default: requests[vring.index - 2].abandon()
        }
    }

    /// Reports an event to the guest on the event queue.
    public func post(_ event: VirtioSCSIEvent) {
        events.queue.async { [events] in events.post(event) }
    }

    /// After a migration the source's rings are stopped and QEMU closes the connection: log
    /// out, so the target sees only the destination's I_T nexus. The next frontend's rings
    /// log in again when they start.
    public func frontendDisconnected() {
        closeSessions()
    }

    /// Logs out of every iSCSI session.
    public func closeSessions() {
        for worker in requests { worker.queue.sync { worker.closeSessions() } }
    }

    // MARK: - Statistics (Docs/OBSERVABILITY.md)

    /// Every request queue's counters as its timer last published them (at most a second
    /// old). From any thread: one short lock per queue, never a wait on a ring's queue.
    public func statistics() -> DeviceStatistics {
        DeviceStatistics(queues: requests.enumerated().map { index, worker in
            var queue = worker.statisticsCell.read()
            queue.queue = index
            return queue
        })
    }

    /// Has every request queue publish its counters now (each on its own queue) and waits for
    /// them, at most `timeout`; then `statistics()`. For readers that want exact figures
    /// (tests, the control socket); never call it on a ring's queue.
    public func refreshStatistics(timeout: DispatchTimeInterval = .milliseconds(500)) -> DeviceStatistics {
        let group = DispatchGroup()
        for worker in requests {
            group.enter()
            worker.queue.async {
                worker.publishStatistics()
                group.leave()
            }
        }
        _ = group.wait(timeout: .now() + timeout)
        return statistics()
    }
}
