import CMallocCounter
import Glibc
import ServerMetrics
import VhostUserDriver
import VirtioCore
import VirtioSCSI

/// The request path of a virtio-scsi request queue without the transport: the driver posts a
/// READ chain (51-byte request header, 108-byte response header, 4 KiB data-in, as Linux lays
/// it out), the device pops it, walks and validates the chain, copies the header out, builds
/// the data-in iovecs, writes the response, pushes and publishes the used element and checks
/// whether to interrupt; the driver takes the used element back. The third variant adds what
/// RequestQueueWorker counts for the metrics, with the same `QueueMeters`: a clock read per
/// batch of submissions and per batch of completions (here: per round), and per request the
/// latency histogram, kind, bytes and errors. The last variant runs the server's own request
/// path: `VirtioSCSIDevice` and its `RequestQueueWorker`, with a session that completes in memory.
enum MicroBench {
    static let ringSize: UInt16 = 256
    static let inFlight = 32

    static func main() {
        let iterations = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 2_000_000
        // The counter must see allocations, or its zeros would mean nothing.
        let before = CMallocCounter_allocations()
        let probe = [Int](repeating: iterations, count: 64 + iterations % 3)
        guard CMallocCounter_allocations() > before, probe.count > 0 else {
            print("vhost-user-scsi-microbench: the allocation counter does not see allocations")
            exit(1)
        }
        do {
            let variants: [(String, () throws -> Result)] = [
                ("direct chain (3 descriptors)", { try run(iterations: iterations, indirect: false, WithoutCounters.self) }),
                ("indirect table (3 entries)", { try run(iterations: iterations, indirect: true, WithoutCounters.self) }),
                ("direct chain + queue counters", { try run(iterations: iterations, indirect: false, WithCounters.self) }),
                ("queue counters alone", { countersAlone(iterations: iterations) }),
                ("request queue worker (device, in-memory session)", { try WorkerBench.run(iterations: iterations) }),
            ]
            // An optional second argument runs only that variant (1-based), e.g. under callgrind.
            let only = CommandLine.arguments.dropFirst(2).first.flatMap { Int($0) }
            for (number, (name, run)) in variants.enumerated() where only == nil || only == number + 1 {
                let result = try run()
                print("\(name): \(fixed(result.nanoseconds, 1)) ns and \(fixed(result.allocations, 3)) "
                      + "allocations per request (\(iterations) requests, \(inFlight) in flight)")
            }
        } catch {
            print("vhost-user-scsi-microbench: \(error)")
            exit(1)
        }
    }

    static func fixed(_ value: Double, _ digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let scaled = (value * scale).rounded()
        let whole = Int(scaled / scale)
        let fraction = Int(abs(scaled) - abs(Double(whole)) * scale)
        let text = String(fraction)
        return "\(whole)." + String(repeating: "0", count: max(digits - text.count, 0)) + text
    }

    enum BenchError: Error { case shortChain }

    struct Result {
        var nanoseconds: Double
        var allocations: Double
    }

    /// Whether a variant counts, as a type: the specialized code of the variants without
    /// counters is the same as before the counters existed.
    protocol CountingMode { static var counting: Bool { get } }
    enum WithoutCounters: CountingMode { static var counting: Bool { false } }
    enum WithCounters: CountingMode { static var counting: Bool { true } }

    /// Only the counting, as the worker does it per request and per batch: its own cost,
    /// without the harness around the ring path.
    static func countersAlone(iterations: Int) -> Result {
        let meters = QueueMeters(tokens: inFlight)
        let rounds = max(iterations / inFlight, 1)
        func oneRound(_ round: Int) {
            meters.submissionBatchStarted()
            for token in 0..<inFlight { meters.submitting(token: token, dataOutLength: 0) }
            for token in 0..<inFlight {
                _ = meters.completed(token: token, batched: true)
                meters.answered(opcode: token & 1 == 0 ? 0x28 : 0x2A, responseOK: true, status: 0,
                                bytesRead: round & 4095, bytesWritten: 0)
            }
            meters.completionBatchEnded()
        }
        for round in 0..<100 { oneRound(round) }
        let allocationsBefore = CMallocCounter_allocations()
        let start = monotonicSeconds()
        for round in 0..<rounds { oneRound(round) }
        let elapsed = monotonicSeconds() - start
        let allocations = CMallocCounter_allocations() - allocationsBefore
        precondition(meters.counters.totalRequests == UInt64((rounds + 100) * inFlight))
        let requests = Double(rounds * inFlight)
        return Result(nanoseconds: elapsed * 1e9 / requests, allocations: Double(allocations) / requests)
    }

    /// `inFlight` READ(16) chains of 4 KiB to target 0 LUN 0, laid out as Linux does, preallocated
    /// and reused round after round: their heads.
    static func postReadChains(driver: DriverSplitQueue, memory: SharedGuestMemory, indirect: Bool) -> [UInt16] {
        var heads: [UInt16] = []
        for i in 0..<inFlight {
            var header = [UInt8](repeating: 0, count: VirtioSCSICommandHeader.byteCount)
            header[0] = 1
            header[2] = 0x40
            header[19] = 0x88  // READ(16)
            header[8] = UInt8(i)
            let h = memory.allocate(copying: header)
            let response = memory.allocate(VirtioSCSICommandResponse.byteCount)
            let data = memory.allocate(4096, alignment: 4096)
            let buffers: [DriverBuffer] = [.readable(h, header.count), .writable(response, VirtioSCSICommandResponse.byteCount),
                                           .writable(data, 4096)]
            heads.append(indirect ? driver.addIndirectChain(buffers) : driver.addChain(buffers))
        }
        return heads
    }

    static func run<Mode: CountingMode>(iterations: Int, indirect: Bool, _ mode: Mode.Type) throws -> Result {
        let counting = Mode.counting
        let memory = try SharedGuestMemory(size: 16 << 20)
        let driver = DriverSplitQueue(memory: memory, size: ringSize, eventIndex: true)
        var device = driver.deviceQueue(eventIndex: true)
        let guest = memory.guestMemory

        let heads = postReadChains(driver: driver, memory: memory, indirect: indirect)
        let chain = ChainSegmentBuffer(capacity: 8)
        let headerCopy = UnsafeMutableRawPointer.allocate(byteCount: VirtioSCSICommandHeader.byteCount, alignment: 8)
        let responseBytes = UnsafeMutableRawBufferPointer.allocate(byteCount: VirtioSCSICommandResponse.byteCount, alignment: 8)
        let iovecs = IOVecBuffer(capacity: 8)
        defer {
            headerCopy.deallocate()
            responseBytes.deallocate()
        }
        var ring = driver.ring
        var checksum = 0
        let meters = QueueMeters(tokens: inFlight)

        func oneRound() throws {
            for head in heads { ring.placeAvail(head) }
            ring.publishAvail()
            if counting { meters.submissionBatchStarted() }
            var token = 0
            while let head = try device.popAvail() {
                try DescriptorChainWalker.walk(queue: device, head: head, memory: guest, into: chain)
                if counting { meters.submitting(token: token, dataOutLength: 0) }
                // The request path's own accessors: header out, data-in iovecs, response in.
                guard chain.copyReadablePrefix(VirtioSCSICommandHeader.byteCount, to: headerCopy) else {
                    throw BenchError.shortChain
                }
                iovecs.reset()
                chain.collect(writable: true, skipping: VirtioSCSICommandResponse.byteCount, into: iovecs)
                checksum &+= iovecs.count + Int(headerCopy.load(fromByteOffset: 19, as: UInt8.self))
                VirtioSCSICommandResponse.encode(response: .ok, status: 0, residual: 0,
                                                 sense: UnsafeRawBufferPointer(start: nil, count: 0), into: responseBytes)
                chain.writeWritable(at: 0, from: UnsafeRawBufferPointer(responseBytes))
                if counting {
                    _ = meters.completed(token: token, batched: true)
                    meters.answered(opcode: headerCopy.load(fromByteOffset: 19, as: UInt8.self), responseOK: true,
                                    status: 0, bytesRead: 4096, bytesWritten: 0)
                    token += 1
                }
                device.addUsed(head: head, length: UInt32(VirtioSCSICommandResponse.byteCount + 4096))
                device.publishUsed()
            }
            if counting { meters.completionBatchEnded() }
            _ = device.needsNotification()
            _ = device.enableKicks()
            while ring.popUsed() != nil {}
            _ = ring.armInterrupt()
        }

        let rounds = max(iterations / inFlight, 1)
        for _ in 0..<100 { try oneRound() }  // warm up: buffers reach their final size
        let allocationsBefore = CMallocCounter_allocations()
        let start = monotonicSeconds()
        for _ in 0..<rounds { try oneRound() }
        let elapsed = monotonicSeconds() - start
        let allocations = CMallocCounter_allocations() - allocationsBefore
        precondition(checksum != 0)
        precondition(!counting || meters.counters.requests(.read) == UInt64((rounds + 100) * inFlight))
        let requests = Double(rounds * inFlight)
        return Result(nanoseconds: elapsed * 1e9 / requests, allocations: Double(allocations) / requests)
    }
}
