import Dispatch
import ServerLog
import Synchronization
import VirtioCore
import VirtioSCSI

/// What became of the event that tells the guest about a LUN change (virtio v1.2 §5.6.6.3).
public enum GuestNotification: Sendable, Equatable, CustomStringConvertible {
    /// Written into an event buffer the driver had posted.
    case delivered
    /// No buffer was posted, or no guest is connected: the next buffer the driver posts is
    /// answered with VIRTIO_SCSI_T_EVENTS_MISSED, and Linux then rescans the whole bus.
    case missed
    /// The driver did not negotiate the feature (VIRTIO_SCSI_F_HOTPLUG for LUNs added or
    /// removed, VIRTIO_SCSI_F_CHANGE for capacity): it sees the change only when it rescans.
    case notNegotiated

    public var description: String {
        switch self {
        case .delivered: return "delivered"
        case .missed: return "missed (the guest is told events were missed and rescans)"
        case .notNegotiated: return "not sent (the guest did not negotiate the feature; it sees the change on a rescan)"
        }
    }
}

/// The device's LUN map and the addresses of units being added (between `reserveID` and
/// `add`, while `addLUN`'s `register` closure runs).
struct LUNState: Sendable {
    var map: LUNMap
    var adding: Set<VirtioSCSIAddress> = []
}

/// LUNs added and removed at runtime, and capacity changes, told to the guest.
///
/// Every method is thread-safe and returns at once, from any thread except the device's own
/// queues being blocked on. The change is made in the device's map under a lock; each queue
/// worker then gets the new map on its own queue; when all have it, the event goes to the
/// guest and `completion` is called (on the event queue) with what became of it. Changes
/// reach the queues and the guest in the order they were made (Docs/HOTPLUG.md).
extension VirtioSCSIDevice {
    /// The logical units the guest can address now, ordered by target and LUN.
    public var logicalUnits: [LogicalUnit] { lunState.withLock { $0.map.units } }

    /// Adds a logical unit at `address` backed by `backendLUN` and returns its new id, the
    /// `backend` the session factory will be called with for it. `register` runs with that id
    /// before any queue can see the unit, so a factory that looks the id up in a table
    /// `register` fills never misses it; it must not call back into the device. Once every
    /// queue has the unit, the guest gets VIRTIO_SCSI_T_TRANSPORT_RESET with reason
    /// VIRTIO_SCSI_EVT_RESET_RESCAN for `address`, if it negotiated VIRTIO_SCSI_F_HOTPLUG.
    @discardableResult
    public func addLUN(address: VirtioSCSIAddress, backendLUN: UInt16, register: (_ id: Int) -> Void = { _ in },
                       completion: (@Sendable (GuestNotification) -> Void)? = nil) throws(LUNMapError) -> Int {
        let id = try lunState.withLock { state throws(LUNMapError) -> Int in
            guard !state.adding.contains(address) else { throw .addressInUse(address) }
            let id = try state.map.reserveID(for: address)
            state.adding.insert(address)
            return id
        }
        register(id)
        lunState.withLock { state in
            state.adding.remove(address)
            let unit: LogicalUnit
            do {
                unit = try state.map.add(id: id, address: address, backendLUN: backendLUN)
            } catch {
                preconditionFailure("\(address) was reserved for unit \(id): \(error)")
            }
            Log.info("LUN \(unit) added")
            publish(state.map, VirtioSCSIEvent(event: VirtioSCSIEvent.transportReset, address: address,
                                               reason: VirtioSCSIEvent.resetRescan),
                    requiring: .scsiHotplug, change: "LUN \(address) added", completion: completion)
        }
        return id
    }

    /// Removes the logical unit at `address` and returns it. From the moment each request
    /// queue has the change, commands to `address` get CHECK CONDITION, LOGICAL UNIT NOT
    /// SUPPORTED and REPORT LUNS leaves it out; the unit's sessions are closed, which
    /// completes its commands in flight with VIRTIO_SCSI_S_ABORTED. Other units are not
    /// touched. Then the guest gets VIRTIO_SCSI_T_TRANSPORT_RESET with reason
    /// VIRTIO_SCSI_EVT_RESET_REMOVED, if it negotiated VIRTIO_SCSI_F_HOTPLUG.
    @discardableResult
    public func removeLUN(address: VirtioSCSIAddress,
                          completion: (@Sendable (GuestNotification) -> Void)? = nil) throws(LUNMapError) -> LogicalUnit {
        try lunState.withLock { state throws(LUNMapError) -> LogicalUnit in
            let unit = try state.map.remove(address: address)
            Log.info("LUN \(unit) removed")
            publish(state.map, VirtioSCSIEvent(event: VirtioSCSIEvent.transportReset, address: address,
                                               reason: VirtioSCSIEvent.resetRemoved),
                    requiring: .scsiHotplug, change: "LUN \(address) removed", completion: completion)
            return unit
        }
    }

    /// Tells the guest that the capacity of the unit at `address` changed (the backend LUN
    /// was resized): VIRTIO_SCSI_T_PARAM_CHANGE with CAPACITY DATA HAS CHANGED (reason
    /// 0x092A), on which Linux re-reads the capacity, if it negotiated VIRTIO_SCSI_F_CHANGE.
    public func reportCapacityChanged(address: VirtioSCSIAddress,
                                      completion: (@Sendable (GuestNotification) -> Void)? = nil) throws(LUNMapError) {
        try lunState.withLock { state throws(LUNMapError) in
            guard state.map.unit(at: address) != nil else { throw .noSuchLUN(address) }
            publish(nil, VirtioSCSIEvent(event: VirtioSCSIEvent.paramChange, address: address,
                                         reason: VirtioSCSIEvent.capacityDataChanged),
                    requiring: .scsiChange, change: "LUN \(address) capacity changed", completion: completion)
        }
    }

    /// Hands `map` (nil: no change) to every queue worker on its own queue, then posts `event`
    /// once all have it. Called under `lunState`'s lock, so every worker queue gets the maps
    /// in version order and the events queue gets the events in the same order.
    private func publish(_ map: LUNMap?, _ event: VirtioSCSIEvent, requiring feature: VirtioFeatures, change: String,
                         completion: (@Sendable (GuestNotification) -> Void)?) {
        let group = DispatchGroup()
        for worker in requests {
            group.enter()
            worker.queue.async {
                if let map { worker.apply(map) }
                group.leave()
            }
        }
        let control = control
        group.enter()
        control.queue.async {
            if let map { control.apply(map) }
            group.leave()
        }
        let events = events
        group.notify(queue: events.queue) {
            let outcome = events.post(event, requiring: feature)
            switch outcome {
            case .delivered:
                Log.info("\(change): the guest was told")
            case .missed:
                Log.info("\(change): no event buffer or no guest; it will be told events were missed")
            case .notNegotiated:
                let bit = feature == .scsiChange ? "VIRTIO_SCSI_F_CHANGE" : "VIRTIO_SCSI_F_HOTPLUG"
                Log.warning("\(change): the guest did not negotiate \(bit), so it sees this only when it rescans")
            }
            completion?(outcome)
        }
    }
}
