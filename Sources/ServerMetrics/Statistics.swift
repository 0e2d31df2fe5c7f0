import Synchronization

/// Transport counters of one logical unit as seen by one request queue (each request queue
/// has its own session per LUN), or summed over the queues.
public struct LUNStatistics: Sendable, Equatable, Encodable {
    /// The guest's address of the unit: virtio-scsi target and LUN.
    public var target: UInt8
    public var lun: UInt16
    /// Sessions that logged in again after losing their connection.
    public var reconnects: UInt64
    /// Connections lost (or targets declared dead by the keep-alive).
    public var connectionLosses: UInt64
    /// Commands that ended in a transport failure (the guest got VIRTIO_SCSI_S_TRANSPORT_FAILURE
    /// or it was retried by the session's outage handling and failed for good).
    public var commandFailures: UInt64
    /// Attempts to make a session for the unit that failed (the request got
    /// VIRTIO_SCSI_S_TRANSPORT_FAILURE and a new login is tried at most once a second).
    public var loginFailures: UInt64
    /// The unit's sessions (one per request queue that has one) by the state of their
    /// connection, when published.
    public var sessionsUp: Int
    public var sessionsReconnecting: Int
    public var sessionsFailing: Int

    public init(target: UInt8, lun: UInt16, reconnects: UInt64 = 0, connectionLosses: UInt64 = 0,
                commandFailures: UInt64 = 0, loginFailures: UInt64 = 0,
                sessionsUp: Int = 0, sessionsReconnecting: Int = 0, sessionsFailing: Int = 0) {
        self.sessionsUp = sessionsUp
        self.sessionsReconnecting = sessionsReconnecting
        self.sessionsFailing = sessionsFailing
        self.target = target
        self.lun = lun
        self.reconnects = reconnects
        self.connectionLosses = connectionLosses
        self.commandFailures = commandFailures
        self.loginFailures = loginFailures
    }

    /// `T:L`, the `lun` label.
    public var label: String { "\(target):\(lun)" }

    public mutating func add(_ other: LUNStatistics) {
        reconnects &+= other.reconnects
        connectionLosses &+= other.connectionLosses
        commandFailures &+= other.commandFailures
        loginFailures &+= other.loginFailures
        sessionsUp += other.sessionsUp
        sessionsReconnecting += other.sessionsReconnecting
        sessionsFailing += other.sessionsFailing
    }

    /// One word for the unit: `failing` or `reconnecting` if any session is, `up` if every
    /// session is up, `idle` when there is none (no guest connected, or no ring started).
    public var state: String {
        if sessionsFailing > 0 { return "failing" }
        if sessionsReconnecting > 0 { return "reconnecting" }
        return sessionsUp > 0 ? "up" : "idle"
    }
}

/// What one request queue last published.
public struct QueueStatistics: Sendable {
    /// The request queue's index: 0 for the first request queue (virtqueue 2).
    public var queue: Int
    public var counters: QueueCounters
    /// Commands sent to the target and not yet completed, when published.
    public var inFlight: Int
    /// One entry per configured unit, ordered by (target, LUN).
    public var luns: [LUNStatistics]

    public init(queue: Int, counters: QueueCounters = QueueCounters(), inFlight: Int = 0, luns: [LUNStatistics] = []) {
        self.queue = queue
        self.counters = counters
        self.inFlight = inFlight
        self.luns = luns
    }
}

/// Statistics of one virtio-scsi controller (one device): its request queues as they last
/// published them (see `StatisticsCell`).
public struct DeviceStatistics: Sendable {
    public var queues: [QueueStatistics]

    public init(queues: [QueueStatistics]) {
        self.queues = queues
    }

    /// Every queue's counters added up.
    public var totals: QueueCounters {
        var total = QueueCounters()
        for queue in queues { total.add(queue.counters) }
        return total
    }

    public var inFlight: Int { queues.reduce(0) { $0 + $1.inFlight } }

    /// Per unit, summed over the request queues, ordered by (target, LUN).
    public var luns: [LUNStatistics] {
        var byAddress: [UInt32: LUNStatistics] = [:]
        for queue in queues {
            for unit in queue.luns {
                let key = UInt32(unit.target) << 16 | UInt32(unit.lun)
                byAddress[key, default: LUNStatistics(target: unit.target, lun: unit.lun)].add(unit)
            }
        }
        return byAddress.keys.sorted().map { byAddress[$0]! }
    }
}

/// A value published by its owner's thread and copied by readers on any thread, under a
/// mutex that is held only for the copy.
public final class StatisticsCell<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    public init(_ initial: Value) {
        mutex = Mutex(initial)
    }

    public func publish(_ value: Value) {
        mutex.withLock { $0 = value }
    }

    public func read() -> Value {
        mutex.withLock { $0 }
    }
}

/// One controller's statistics for an exporter: its name (the `controller` label) and how to
/// read them (usually `device.statistics()`), called on the exporter's thread.
public struct MetricsSource: Sendable {
    public let controller: String
    public let statistics: @Sendable () -> DeviceStatistics

    public init(controller: String, statistics: @escaping @Sendable () -> DeviceStatistics) {
        self.controller = controller
        self.statistics = statistics
    }
}
