import CMallocCounter
import Dispatch
import SCSICore
import ServerMetrics
import VhostUserBackend
import VhostUserDriver
import VhostUserSCSI
import VirtioCore
import VirtioSCSI

/// The server's request path without the transport: `VirtioSCSIDevice` pops the READ chains,
/// its `RequestQueueWorker` builds the commands and submits them to a session that keeps the
/// tokens; the session then completes them as libiscsi does (one batch per read of the
/// connection) and the worker answers, pushes and publishes them. Everything a real request
/// costs on the ring's queue except libiscsi itself.
enum WorkerBench {
    static func run(iterations: Int) throws -> MicroBench.Result {
        let memory = try SharedGuestMemory(size: 16 << 20)
        let driver = DriverSplitQueue(memory: memory, size: MicroBench.ringSize, eventIndex: true)
        let heads = MicroBench.postReadChains(driver: driver, memory: memory, indirect: false)
        let session = InMemorySession()
        let device = VirtioSCSIDevice(lunMap: LUNMap([(VirtioSCSIAddress(target: 0, lun: 0), 0)]), requestQueues: 1) { _, _, _ in
            session
        }
        let index = 2  // the first request queue
        let queue = device.dispatchQueue(forVring: index)
        let vring = Vring(index: index, queue: queue, ring: driver.deviceQueue(eventIndex: true), memory: memory.guestMemory,
                          negotiatedFeatures: [.eventIndex])
        var ring = driver.ring

        func oneRound() {
            for head in heads { ring.placeAvail(head) }
            ring.publishAvail()
            device.kick(vring)
            precondition(session.count == heads.count, "the worker submitted \(session.count) of \(heads.count) commands")
            session.completeAll()
            var used = 0
            while ring.popUsed() != nil { used += 1 }
            precondition(used == heads.count, "\(used) of \(heads.count) requests were answered")
            _ = ring.armInterrupt()
        }

        let rounds = max(iterations / MicroBench.inFlight, 1)
        var result = MicroBench.Result(nanoseconds: 0, allocations: 0)
        // All on the worker's queue, as the kick source and libiscsi's callbacks run there.
        queue.sync {
            device.start(vring)
            for _ in 0..<100 { oneRound() }  // warm up: sessions made, buffers at their final size
            let allocationsBefore = CMallocCounter_allocations()
            let start = monotonicSeconds()
            for _ in 0..<rounds { oneRound() }
            let elapsed = monotonicSeconds() - start
            let allocations = CMallocCounter_allocations() - allocationsBefore
            let requests = Double(rounds * MicroBench.inFlight)
            result = MicroBench.Result(nanoseconds: elapsed * 1e9 / requests, allocations: Double(allocations) / requests)
        }
        device.stop(vring) {}
        return result
    }
}

/// A session that keeps the submitted tokens and completes them all, GOOD with no residual,
/// when told; confined to the worker's queue like a real one. Its storage is allocated once.
private final class InMemorySession: SCSITargetSession, @unchecked Sendable {
    // @unchecked: used on the worker's queue only (the factory merely hands it over).
    weak var completionSink: SCSICompletionSink?
    private let tokens = UnsafeMutablePointer<Int>.allocate(capacity: 1024)
    private let pending = UnsafeMutablePointer<Int>.allocate(capacity: 1)

    init() { pending.initialize(to: 0) }

    deinit {
        tokens.deallocate()
        pending.deallocate()
    }

    var count: Int { pending.pointee }
    var deliversCompletionsInBatches: Bool { true }

    func submit(_ command: SCSICommand, token: Int) -> Bool {
        precondition(command.transferLength == 4096 && command.direction == .fromDevice)
        tokens[pending.pointee] = token
        pending.pointee += 1
        return true
    }

    /// One batch, as one read of an iSCSI connection delivers them.
    func completeAll() {
        guard let sink = completionSink else { preconditionFailure("no completion sink") }
        for i in 0..<pending.pointee { sink.scsiCommandCompleted(token: tokens[i], SCSICompletion(outcome: .completed)) }
        pending.pointee = 0
        sink.scsiCompletionBatchEnded()
    }

    func flush() {}
    func taskManagement(_ function: SCSITaskManagementFunction, lun: UInt16,
                        reply: @escaping (SCSITaskManagementResponse) -> Void) { reply(.functionComplete) }
    func isOutstanding(token: Int) -> Bool { false }
    func close() {}
}
