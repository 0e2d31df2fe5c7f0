import CMallocCounter
import Glibc
import VhostUserDriver
import VirtioCore
import VirtioSCSI

/// The request path of a virtio-scsi request queue without the transport: the driver posts a
/// READ chain (51-byte request header, 108-byte response header, 4 KiB data-in, as Linux lays
/// it out), the device pops it, walks and validates the chain, copies the header out, builds
/// the data-in iovecs, writes the response, pushes and publishes the used element and checks
/// whether to interrupt; the driver takes the used element back.
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
            for (name, indirect) in [("direct chain (3 descriptors)", false), ("indirect table (3 entries)", true)] {
                let result = try run(iterations: iterations, indirect: indirect)
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

    static func run(iterations: Int, indirect: Bool) throws -> Result {
        let memory = try SharedGuestMemory(size: 16 << 20)
        let driver = DriverSplitQueue(memory: memory, size: ringSize, eventIndex: true)
        var device = driver.deviceQueue(eventIndex: true)
        let guest = memory.guestMemory

        // Preallocated chains, reused round after round.
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

        func oneRound() throws {
            for head in heads { ring.placeAvail(head) }
            ring.publishAvail()
            while let head = try device.popAvail() {
                try DescriptorChainWalker.walk(queue: device, head: head, memory: guest, into: chain)
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
                device.addUsed(head: head, length: UInt32(VirtioSCSICommandResponse.byteCount + 4096))
                device.publishUsed()
            }
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
        let requests = Double(rounds * inFlight)
        return Result(nanoseconds: elapsed * 1e9 / requests, allocations: Double(allocations) / requests)
    }
}
