import Dispatch
import ServerLog
import VhostUserBackend
import VirtioCore
import VirtioSCSI

/// Serves the event queue (virtio v1.2 §5.6.6.3): the driver's buffers stay on the ring
/// until there is an event to report. An event with no buffer to carry it is dropped and
/// the next event delivered carries VIRTIO_SCSI_T_EVENTS_MISSED. Confined to `queue`.
final class EventQueueWorker: @unchecked Sendable {
    // @unchecked: confined to `queue`.
    let queue: DispatchQueue
    private var vring: Vring?
    private(set) var eventsMissed = false

    init(queue: DispatchQueue) { self.queue = queue }

    func start(_ vring: Vring) {
        self.vring = vring
        deliverMissedNotice()
    }

    func stop(drained: @escaping @Sendable () -> Void) {
        vring = nil
        drained()  // nothing is ever in flight on this queue
    }

    /// Buffers are kept, not consumed, on a kick, unless events were dropped for lack of
    /// them: then the driver is told at once, with VIRTIO_SCSI_T_NO_EVENT |
    /// VIRTIO_SCSI_T_EVENTS_MISSED, so it rescans (virtio v1.2 §5.6.6.3.1).
    func kick() { deliverMissedNotice() }

    private func deliverMissedNotice() {
        guard eventsMissed, let vring, ((try? vring.ring.pendingCount()) ?? 0) > 0 else { return }
        post(VirtioSCSIEvent(event: VirtioSCSIEvent.noEvent, address: VirtioSCSIAddress(target: 0, lun: 0), reason: 0))
    }

    /// Reports `event` in the next buffer the driver provided, if the driver negotiated
    /// `feature` (the device must not send events of a class the driver did not accept).
    /// Without a started ring the feature is unknown: the event counts as missed.
    @discardableResult
    func post(_ event: VirtioSCSIEvent, requiring feature: VirtioFeatures = []) -> GuestNotification {
        guard let vring else {
            eventsMissed = true
            return .missed
        }
        guard vring.negotiatedFeatures.isSuperset(of: feature) else { return .notNegotiated }
        let head: UInt16?
        do { head = try vring.pop() } catch {
            Log.error("event queue: \(error)")
            eventsMissed = true
            return .missed
        }
        guard let head else {
            Log.warning("event queue: no buffer for event \(event.event); the guest will be told events were missed")
            eventsMissed = true
            return .missed
        }
        let chain = ChainSegmentBuffer(capacity: 2)
        do {
            try DescriptorChainWalker.walk(queue: vring.ring, head: head, memory: vring.memory, into: chain)
        } catch {
            Log.error("event queue: buffer \(head) refused: \(error)")
            vring.push(head: head, length: 0)
            vring.publishUsedAndNotify()
            eventsMissed = true
            return .missed
        }
        var delivered = event
        if eventsMissed { delivered.event |= VirtioSCSIEvent.eventsMissed }
        let written = delivered.encoded().withUnsafeBytes { chain.writeWritable(at: 0, from: $0) }
        // A buffer too short for the whole event loses it: the next one says so.
        let complete = written == VirtioSCSIEvent.byteCount
        eventsMissed = !complete
        vring.logWrites(to: chain, headerBytes: written)
        vring.push(head: head, length: UInt32(written))
        vring.publishUsedAndNotify()
        return complete ? .delivered : .missed
    }
}
