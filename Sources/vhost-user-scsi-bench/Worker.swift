import Glibc
import Synchronization
import VhostUserDriver
import VirtioCore

/// One stretch of work for every queue: a prefill pass, the timed workload, a read-back pass.
struct Phase {
    enum Kind { case prefill, workload, readback }
    var kind: Kind
    /// Percentage of reads (100: all reads, 0: all writes).
    var readPercent: Int
    var random: Bool
    /// Each slot covers its share of the range once, then stops (verify passes).
    var onePass: Bool
    /// No new submissions at or after this time (monotonic ns).
    var deadline: UInt64
    /// Completions in [measureStart, measureEnd) are counted and timed.
    var measureStart: UInt64
    var measureEnd: UInt64
}

/// Where the guest-side request buffers live: per slot a 256-byte block (request header at 0,
/// response at 64, indirect table at 192) and a data buffer of `bs` bytes.
enum SlotLayout {
    static let bytes = 256
    static let response = 64
    static let table = 192
    static let headerBytes = 51       // virtio_scsi_cmd_req with a 32-byte CDB
    static let responseBytes = 108    // virtio_scsi_cmd_resp with 96 bytes of sense
    static let cdb = 19
}

/// The guest driver of one request queue: a thread that keeps `depth` requests in flight,
/// polls the used ring and sleeps on the call eventfd when it is empty. All state is
/// preallocated; the loop does not allocate, lock or reference-count.
final class QueueWorker: @unchecked Sendable {
    // @unchecked: configured on the main thread before the worker's thread starts, then
    // touched only by that thread until it is joined; `progress` and `finished` are atomics.
    let queue: Int
    let vring: Int
    var ring: UnsafeDriverRing
    let kickFD: Int32
    let callFD: Int32
    let depth: Int
    let indirect: Bool
    let bs: Int
    var logicalBlock = 512
    var blocksPerIO: UInt64 = 8
    let slotArea: UnsafeMutableRawPointer
    let slotAreaGPA: UInt64
    let dataArea: UnsafeMutableRawPointer
    let dataAreaGPA: UInt64

    // Per slot.
    let submittedAt: UnsafeMutablePointer<UInt64>
    let unitOf: UnsafeMutablePointer<UInt64>
    let isWrite: UnsafeMutablePointer<Bool>
    /// 0: descriptors not written yet, 1: laid out for a read, 2: for a write.
    let layout: UnsafeMutablePointer<UInt8>
    let cursor: UnsafeMutablePointer<UInt64>
    let pendingGeneration: UnsafeMutablePointer<UInt32>
    let inFlight: UnsafeMutablePointer<Bool>

    // The LBA range, in units of `bs`.
    var units: UInt64 = 0
    var sequentialStart: UInt64 = 0
    var sequentialEnd: UInt64 = 0
    var sequentialNext: UInt64 = 0
    let globalSlotBase: Int
    var totalSlots: Int = 1
    /// Verify mode: slot g owns the units u with u % totalSlots == g, so a unit never has two
    /// requests in flight and its expected content is known.
    var partitioned = false
    var generation: UnsafeMutablePointer<UInt32>? = nil
    var runID: UInt64 = 0
    var rng: UInt64

    // Results of the last phase.
    var histogram = LatencyHistogram()
    var completed: UInt64 = 0
    var reads: UInt64 = 0
    var writes: UInt64 = 0
    var allCompleted: UInt64 = 0
    var errors: UInt64 = 0
    var verifyFailures: UInt64 = 0
    var firstError: String? = nil
    /// Completions so far (for the stall watchdog) and "the loop has returned".
    let progress = Atomic<UInt64>(0)
    let finished = Atomic<Bool>(false)
    let abort = Atomic<Bool>(false)

    init(queue: Int, ring: UnsafeDriverRing, kickFD: Int32, callFD: Int32, depth: Int, indirect: Bool, bs: Int,
         slotArea: UnsafeMutableRawPointer, slotAreaGPA: UInt64, dataArea: UnsafeMutableRawPointer, dataAreaGPA: UInt64,
         lunField: [UInt8]) {
        self.queue = queue
        vring = queue + 2
        self.ring = ring
        self.kickFD = kickFD
        self.callFD = callFD
        self.depth = depth
        self.indirect = indirect
        self.bs = bs
        self.slotArea = slotArea
        self.slotAreaGPA = slotAreaGPA
        self.dataArea = dataArea
        self.dataAreaGPA = dataAreaGPA
        globalSlotBase = queue * depth
        submittedAt = .allocate(capacity: depth); submittedAt.initialize(repeating: 0, count: depth)
        unitOf = .allocate(capacity: depth); unitOf.initialize(repeating: 0, count: depth)
        isWrite = .allocate(capacity: depth); isWrite.initialize(repeating: false, count: depth)
        layout = .allocate(capacity: depth); layout.initialize(repeating: 0, count: depth)
        cursor = .allocate(capacity: depth); cursor.initialize(repeating: 0, count: depth)
        pendingGeneration = .allocate(capacity: depth); pendingGeneration.initialize(repeating: 0, count: depth)
        inFlight = .allocate(capacity: depth); inFlight.initialize(repeating: false, count: depth)
        rng = 0x9E37_79B9_7F4A_7C15 &* UInt64(queue + 1) | 1
        for s in 0..<depth {
            let header = slotArea + s * SlotLayout.bytes
            lunField.withUnsafeBytes { header.copyMemory(from: $0.baseAddress!, byteCount: 8) }
            (header + 8).storeBytes(of: UInt64(vring << 16 | s).littleEndian, as: UInt64.self)
            if indirect {
                // The head descriptor (index s) points at the slot's table for good.
                ring.writeDescriptor(UInt16(s), address: slotAreaGPA + UInt64(s * SlotLayout.bytes + SlotLayout.table),
                                     length: 48, flags: .indirect, next: 0)
            }
        }
    }

    deinit {
        submittedAt.deallocate(); unitOf.deallocate(); isWrite.deallocate(); layout.deallocate()
        cursor.deallocate(); pendingGeneration.deallocate(); inFlight.deallocate()
        histogram.deallocate()
    }

    /// Descriptor head of slot `s`, and back.
    @inline(__always) func head(_ s: Int) -> UInt16 { UInt16(indirect ? s : 3 * s) }
    @inline(__always) func slot(ofHead id: UInt32) -> Int? {
        let s = indirect ? Int(id) : Int(id) / 3
        guard (indirect || id % 3 == 0), s < depth, inFlight[s] else { return nil }
        return s
    }

    @inline(__always) func random() -> UInt64 {
        // xorshift64*
        rng ^= rng >> 12
        rng ^= rng << 25
        rng ^= rng >> 27
        return rng &* 0x2545_F491_4F6C_DD1D
    }

    /// How many units slot `s` owns in partitioned mode.
    @inline(__always) func ownedUnits(_ s: Int) -> UInt64 {
        let g = UInt64(globalSlotBase + s)
        guard units > g else { return 0 }
        return (units - g - 1) / UInt64(totalSlots) + 1
    }

    /// Whether slot `s` has more to do in a one-pass phase.
    @inline(__always) func hasWork(_ s: Int, _ phase: Phase) -> Bool {
        !phase.onePass || cursor[s] < ownedUnits(s)
    }

    @inline(__always)
    func chooseUnit(_ s: Int, _ phase: Phase) -> UInt64 {
        if partitioned {
            let owned = ownedUnits(s)
            let k: UInt64
            if phase.random {
                k = random().multipliedFullWidth(by: owned).high
            } else {
                k = cursor[s]
                cursor[s] = k + 1 >= owned && !phase.onePass ? 0 : k + 1
            }
            return UInt64(globalSlotBase + s) + k * UInt64(totalSlots)
        }
        if phase.random { return random().multipliedFullWidth(by: units).high }
        let u = sequentialNext
        sequentialNext = u + 1 >= sequentialEnd ? sequentialStart : u + 1
        return u
    }

    /// Fills slot `s` with a READ(16) or WRITE(16) and places its head in the avail ring.
    @inline(__always)
    func submit(_ s: Int, _ phase: Phase, now: UInt64, ring: inout UnsafeDriverRing) {
        let write: Bool
        switch phase.readPercent {
        case 100: write = false
        case 0: write = true
        default: write = Int(truncatingIfNeeded: random().multipliedFullWidth(by: 100).high) >= phase.readPercent
        }
        let unit = chooseUnit(s, phase)
        let lba = unit &* blocksPerIO
        let header = slotArea + s * SlotLayout.bytes
        let cdb = header + SlotLayout.cdb
        cdb.storeBytes(of: write ? 0x8A : 0x88, as: UInt8.self)
        (cdb + 2).storeBytes(of: lba.bigEndian, as: UInt64.self)
        (cdb + 10).storeBytes(of: UInt32(truncatingIfNeeded: blocksPerIO).bigEndian, as: UInt32.self)
        if let generation {
            if write {
                var g = generation[Int(unit)] &+ 1
                if g == 0 { g = 1 }
                pendingGeneration[s] = g
                stamp(s, lba: lba, generation: g)
            } else {
                poison(s)
            }
        }
        let wanted: UInt8 = write ? 2 : 1
        if layout[s] != wanted {
            layout[s] = wanted
            writeDescriptors(s, write: write, ring: ring)
        }
        isWrite[s] = write
        unitOf[s] = unit
        submittedAt[s] = now
        inFlight[s] = true
        ring.placeAvail(head(s))
    }

    /// [header R][response W][data W] for a read, [header R][data R][response W] for a write.
    func writeDescriptors(_ s: Int, write: Bool, ring: UnsafeDriverRing) {
        let base = slotAreaGPA + UInt64(s * SlotLayout.bytes)
        let header = (base, UInt32(SlotLayout.headerBytes), DescriptorFlags.next)
        let data = (dataAreaGPA + UInt64(s * bs), UInt32(bs), write ? DescriptorFlags.next : [.write, .next])
        let response = (base + UInt64(SlotLayout.response), UInt32(SlotLayout.responseBytes),
                        write ? DescriptorFlags.write : [.write, .next])
        put(s, 0, header, ring)
        if write {
            put(s, 1, data, ring)
            put(s, 2, (response.0, response.1, response.2.subtracting(.next)), ring)
        } else {
            put(s, 1, response, ring)
            put(s, 2, (data.0, data.1, data.2.subtracting(.next)), ring)
        }
    }

    @inline(__always)
    private func put(_ s: Int, _ i: Int, _ d: (UInt64, UInt32, DescriptorFlags), _ ring: UnsafeDriverRing) {
        if indirect {
            let p = slotArea + s * SlotLayout.bytes + SlotLayout.table + 16 * i
            p.storeBytes(of: d.0.littleEndian, as: UInt64.self)
            (p + 8).storeBytes(of: d.1.littleEndian, as: UInt32.self)
            (p + 12).storeBytes(of: d.2.rawValue.littleEndian, as: UInt16.self)
            (p + 14).storeBytes(of: UInt16(i + 1).littleEndian, as: UInt16.self)
        } else {
            ring.writeDescriptor(UInt16(3 * s + i), address: d.0, length: d.1, flags: d.2, next: UInt16(3 * s + i + 1))
        }
    }

    // MARK: Data pattern

    static let magic: UInt32 = 0x4253_5556  // "VUSB"

    /// Each logical block starts with (LBA, generation, magic, run id) and ends with ~LBA.
    func stamp(_ s: Int, lba: UInt64, generation g: UInt32) {
        let data = dataArea + s * bs
        var b = 0
        while b < bs {
            let p = data + b
            let l = lba &+ UInt64(b / logicalBlock)
            p.storeBytes(of: l, as: UInt64.self)
            (p + 8).storeBytes(of: g, as: UInt32.self)
            (p + 12).storeBytes(of: Self.magic, as: UInt32.self)
            (p + 16).storeBytes(of: runID, as: UInt64.self)
            (p + logicalBlock - 8).storeBytes(of: ~l, as: UInt64.self)
            b += logicalBlock
        }
    }

    func poison(_ s: Int) {
        let data = dataArea + s * bs
        var b = 0
        while b < bs {
            (data + b).initializeMemory(as: UInt8.self, repeating: 0xEE, count: 24)
            (data + b + logicalBlock - 8).storeBytes(of: UInt64.max, as: UInt64.self)
            b += logicalBlock
        }
    }

    /// Checks a read's data against the stamp its unit should carry; nil when it matches.
    func check(_ s: Int) -> String? {
        guard let generation else { return nil }
        let unit = unitOf[s]
        let expected = generation[Int(unit)]
        guard expected != 0 else { return nil }  // content unknown (a write to it failed)
        let lba = unit &* blocksPerIO
        let data = dataArea + s * bs
        var b = 0
        while b < bs {
            let p = data + b
            let l = lba &+ UInt64(b / logicalBlock)
            let gotLBA = p.load(as: UInt64.self)
            let gotGen = (p + 8).load(as: UInt32.self)
            let gotMagic = (p + 12).load(as: UInt32.self)
            let gotRun = (p + 16).load(as: UInt64.self)
            let tail = (p + logicalBlock - 8).load(as: UInt64.self)
            if gotLBA != l || gotGen != expected || gotMagic != Self.magic || gotRun != runID || tail != ~l {
                return "verify: LBA \(l): found LBA \(gotLBA) generation \(gotGen) magic 0x\(String(gotMagic, radix: 16)) "
                    + "run \(gotRun == runID ? "this" : "other") tail \(tail == ~l ? "ok" : "bad"); expected generation \(expected)"
            }
            b += logicalBlock
        }
        return nil
    }

    // MARK: The loop

    /// Runs `phase` on this thread until every slot is done and nothing is in flight (or
    /// `abort` is set).
    func run(_ phase: Phase) {
        histogram.reset()
        completed = 0; reads = 0; writes = 0; allCompleted = 0; errors = 0; verifyFailures = 0
        cursor.update(repeating: 0, count: depth)
        sequentialNext = sequentialStart
        var ring = self.ring
        var inflight = 0
        var now = monotonicNanoseconds()
        for s in 0..<depth where hasWork(s, phase) && now < phase.deadline {
            submit(s, phase, now: now, ring: &ring)
            inflight += 1
        }
        ring.publishAvail()
        if ring.needsKick() { kick() }
        let response = SlotLayout.response
        while inflight > 0 {
            var handled = 0
            var submitted = 0
            now = monotonicNanoseconds()
            let submitting = now < phase.deadline
            let measuring = now >= phase.measureStart && now < phase.measureEnd
            while let element = ring.popUsed() {
                guard let s = slot(ofHead: element.id) else {
                    fail("backend returned used element id \(element.id), which is not in flight")
                    abort.store(true, ordering: .relaxed)
                    break
                }
                inFlight[s] = false
                inflight -= 1
                handled += 1
                let r = slotArea + s * SlotLayout.bytes + response
                let status = (r + 10).load(as: UInt8.self)
                let code = (r + 11).load(as: UInt8.self)
                let residual = UInt32(littleEndian: (r + 4).loadUnaligned(as: UInt32.self))
                if code != 0 || status != 0 || residual != 0 {
                    errors += 1
                    if firstError == nil { fail(describeFailure(s, code: code, status: status, residual: residual)) }
                    if isWrite[s], let generation { generation[Int(unitOf[s])] = 0 }
                } else if let generation {
                    if isWrite[s] {
                        generation[Int(unitOf[s])] = pendingGeneration[s]
                    } else if let mismatch = check(s) {
                        verifyFailures += 1
                        if firstError == nil { fail(mismatch) }
                    }
                }
                if measuring {
                    histogram.record(now &- submittedAt[s])
                    completed += 1
                    if isWrite[s] { writes += 1 } else { reads += 1 }
                }
                allCompleted += 1
                if submitting && hasWork(s, phase) {
                    submit(s, phase, now: now, ring: &ring)
                    inflight += 1
                    submitted += 1
                }
            }
            if submitted > 0 {
                ring.publishAvail()
                if ring.needsKick() { kick() }
            }
            if handled > 0 {
                progress.store(allCompleted, ordering: .relaxed)
                continue
            }
            if abort.load(ordering: .relaxed) { break }
            if ring.armInterrupt() { continue }
            var count: UInt64 = 0
            _ = read(callFD, &count, 8)
        }
        self.ring = ring
        progress.store(allCompleted, ordering: .relaxed)
        finished.store(true, ordering: .releasing)
    }

    @inline(__always) func kick() {
        var one: UInt64 = 1
        _ = write(kickFD, &one, 8)
    }

    func fail(_ message: String) {
        if firstError == nil { firstError = message }
    }

    func describeFailure(_ s: Int, code: UInt8, status: UInt8, residual: UInt32) -> String {
        let r = slotArea + s * SlotLayout.bytes + SlotLayout.response
        var text = "\(isWrite[s] ? "WRITE(16)" : "READ(16)") of LBA \(unitOf[s] &* blocksPerIO) on queue \(queue): "
        if code != 0 { return text + "virtio-scsi response \(Self.responseName(code))" }
        if status != 0 {
            text += "SCSI status 0x\(String(status, radix: 16))"
            let senseLength = Int(UInt32(littleEndian: r.loadUnaligned(as: UInt32.self)))
            if senseLength >= 14 { text += Self.senseText(r + 12) }
            return text
        }
        return text + "residual \(residual) bytes"
    }

    static func senseText(_ sense: UnsafeRawPointer) -> String {
        let format = sense.load(as: UInt8.self) & 0x7F
        let (key, asc, ascq): (UInt8, UInt8, UInt8) = format >= 0x72
            ? ((sense + 1).load(as: UInt8.self) & 0xF, (sense + 2).load(as: UInt8.self), (sense + 3).load(as: UInt8.self))
            : ((sense + 2).load(as: UInt8.self) & 0xF, (sense + 12).load(as: UInt8.self), (sense + 13).load(as: UInt8.self))
        return ", sense key 0x\(String(key, radix: 16)) ASC/ASCQ 0x\(String(asc, radix: 16))/0x\(String(ascq, radix: 16))"
    }

    static func responseName(_ code: UInt8) -> String {
        let names = ["OK", "OVERRUN", "ABORTED", "BAD_TARGET", "RESET", "BUSY", "TRANSPORT_FAILURE",
                     "TARGET_FAILURE", "NEXUS_FAILURE", "FAILURE", "FUNCTION_SUCCEEDED", "FUNCTION_REJECTED",
                     "INCORRECT_LUN"]
        return Int(code) < names.count ? names[Int(code)] : "\(code)"
    }

    // MARK: Setup commands

    struct CommandResult {
        var response: UInt8
        var status: UInt8
        var sense: [UInt8]
        var data: [UInt8]
    }

    /// One command with an optional data-in transfer, synchronously, in slot 0 (before the
    /// worker thread runs). Waits at most `timeout` seconds.
    func syncCommand(_ cdbBytes: [UInt8], dataIn: Int, timeout: Double) throws -> CommandResult {
        precondition(cdbBytes.count <= 32 && dataIn <= bs)
        let header = slotArea
        (header + SlotLayout.cdb).initializeMemory(as: UInt8.self, repeating: 0, count: 32)
        cdbBytes.withUnsafeBytes { (header + SlotLayout.cdb).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        let base = slotAreaGPA
        let r = base + UInt64(SlotLayout.response)
        var parts: [(UInt64, UInt32, DescriptorFlags)] = [(base, UInt32(SlotLayout.headerBytes), []),
                                                          (r, UInt32(SlotLayout.responseBytes), .write)]
        if dataIn > 0 { parts.append((dataAreaGPA, UInt32(dataIn), .write)) }
        for (i, part) in parts.enumerated() {
            let flags: DescriptorFlags = i < parts.count - 1 ? part.2.union(.next) : part.2
            // Direct descriptors 0.. for setup; the I/O layout is rewritten afterwards.
            ring.writeDescriptor(UInt16(i), address: part.0, length: part.1, flags: flags, next: UInt16(i + 1))
        }
        layout[0] = 0
        (slotArea + SlotLayout.response).initializeMemory(as: UInt8.self, repeating: 0, count: SlotLayout.responseBytes)
        (slotArea + SlotLayout.response + 11).storeBytes(of: 0xFF, as: UInt8.self)
        ring.placeAvail(0)
        ring.publishAvail()
        _ = ring.needsKick()
        kick()
        let deadline = monotonicSeconds() + timeout
        while true {
            if let element = ring.popUsed() {
                guard element.id == 0 else { throw DriverError.protocolError("backend completed descriptor \(element.id), expected 0") }
                break
            }
            if ring.armInterrupt() { continue }
            let remaining = deadline - monotonicSeconds()
            guard remaining > 0 else { throw DriverError.timeout("no answer to SCSI command 0x\(String(cdbBytes[0], radix: 16)) within \(timeout) s") }
            var p = pollfd(fd: callFD, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, Int32(min(remaining, 1) * 1000)) > 0 {
                var count: UInt64 = 0
                _ = read(callFD, &count, 8)
            }
        }
        if indirect {
            // Descriptors 0..<parts.count are the indirect heads of slots 0.. again.
            for s in 0..<min(parts.count, depth) {
                ring.writeDescriptor(UInt16(s), address: slotAreaGPA + UInt64(s * SlotLayout.bytes + SlotLayout.table),
                                     length: 48, flags: .indirect, next: 0)
            }
        }
        let resp = slotArea + SlotLayout.response
        let senseLength = min(Int(UInt32(littleEndian: resp.loadUnaligned(as: UInt32.self))), 96)
        return CommandResult(response: (resp + 11).load(as: UInt8.self), status: (resp + 10).load(as: UInt8.self),
                             sense: Array(UnsafeRawBufferPointer(start: resp + 12, count: senseLength)),
                             data: Array(UnsafeRawBufferPointer(start: dataArea, count: dataIn)))
    }
}
