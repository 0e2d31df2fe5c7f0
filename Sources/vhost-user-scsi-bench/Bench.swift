import Glibc
import Synchronization
import VhostUserBackend
import VhostUserDriver
import VhostUserProtocol
import VirtioCore
import VirtioSCSI

/// Writes `text` to standard error in one write(2).
func printError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}

/// A failure of the backend or the system: one line on stderr, exit code 1.
struct BenchFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

enum Bench {
    static func main(_ arguments: [String]) -> Int32 {
        let options: BenchOptions
        do {
            guard let parsed = try BenchOptions.parse(Array(arguments.dropFirst())) else {
                print(BenchOptions.usage)
                return 0
            }
            options = parsed
        } catch {
            printError("vhost-user-scsi-bench: \(error.description)\n")
            return 2
        }
        if let pid = options.backendPID, ProcessCPU.seconds(pid: pid) == nil {
            printError("vhost-user-scsi-bench: --backend-pid \(pid): no such process (cannot read /proc/\(pid)/stat)\n")
            return 2
        }
        signal(SIGPIPE, SIG_IGN)
        do {
            let report = try Run(options: options).execute()
            print(options.json ? report.json() : report.text())
            return report.failed ? 1 : 0
        } catch {
            printError("vhost-user-scsi-bench: \(describe(error, options))\n")
            return 1
        }
    }

    static func describe(_ error: Error, _ options: BenchOptions) -> String {
        // A failed connect already reads "cannot connect to SOCKET: reason" (UnixSocket.connect).
        if let e = error as? SystemError { return e.description }
        if let e = error as? VhostUserFrontend.Error { return "\(options.socket): \(e.description)" }
        return "\(error)"
    }
}

/// CPU time of a process (all threads) from /proc/PID/stat, and of this process.
enum ProcessCPU {
    static let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))

    static func seconds(pid: Int32) -> Double? {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 2048)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        let text = String(decoding: buffer[..<n], as: UTF8.self)
        // The command name (field 2) may contain spaces: fields after the last ')'.
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / ticks
    }

    static func own() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }
}

/// One run of the tool: connect, set up, prefill (verify), workload, read back (verify), stop.
final class Run {
    let o: BenchOptions
    var frontend: VhostUserFrontend!
    var memory: SharedGuestMemory!
    var rings: [DriverSplitQueue] = []
    var workers: [QueueWorker] = []
    var indirect = false
    var eventIndex = false
    var blockCount: UInt64 = 0
    var logicalBlock = 512
    var generation: UnsafeMutablePointer<UInt32>? = nil

    init(options: BenchOptions) { o = options }

    deinit { generation?.deallocate() }

    func progress(_ text: String) {
        if !o.quiet { printError("vhost-user-scsi-bench: \(text)\n") }
    }

    func execute() throws -> Report {
        try connect()
        try inspectLUN()
        let rangeBytes = try rangeInBytes()
        let units = rangeBytes / UInt64(o.blockSize)
        let totalSlots = o.queues * o.iodepth
        let runID = UInt64(truncatingIfNeeded: monotonicNanoseconds()) ^ UInt64(getpid())
        if o.verify {
            guard units >= UInt64(totalSlots) else {
                throw BenchFailure("--verify needs a range of at least queues × iodepth × bs = \(UInt64(totalSlots) * UInt64(o.blockSize)) bytes")
            }
            generation = .allocate(capacity: Int(units))
            generation!.initialize(repeating: 0, count: Int(units))
        }
        for w in workers {
            w.logicalBlock = logicalBlock
            w.blocksPerIO = UInt64(o.blockSize / logicalBlock)
            w.units = units
            w.totalSlots = totalSlots
            w.partitioned = o.verify
            w.generation = generation
            w.runID = runID
            // Sequential jobs: each queue streams through its own slice of the range.
            let slice = max(1, units / UInt64(o.queues))
            w.sequentialStart = min(UInt64(w.queue) * slice, units - 1)
            w.sequentialEnd = w.queue == o.queues - 1 ? units : min(units, w.sequentialStart + slice)
            w.sequentialNext = w.sequentialStart
        }

        var report = Report(options: o, indirect: indirect, eventIndex: eventIndex, blockCount: blockCount,
                            logicalBlock: logicalBlock, rangeBytes: rangeBytes)
        if o.verify {
            progress("verify: writing the pattern over \(rangeBytes) bytes")
            let result = try runPhase(Phase(kind: .prefill, readPercent: 0, random: false, onePass: true,
                                            deadline: .max, measureStart: 0, measureEnd: 0))
            report.verifyWrites = result.allCompleted
            if let failure = result.failure { report.failure = failure; return finish(report) }
        }
        let start = monotonicNanoseconds() + UInt64(o.ramp * 1e9)
        let end = start + UInt64(o.runtime * 1e9)
        progress("running \(o.rw.rawValue) bs=\(o.blockSize) iodepth=\(o.iodepth) queues=\(o.queues) for \(o.ramp)+\(o.runtime) s")
        let result = try runPhase(Phase(kind: .workload, readPercent: o.rw.fixedReadPercent ?? o.rwmixread,
                                        random: o.rw.random, onePass: false, deadline: end,
                                        measureStart: start, measureEnd: end))
        report.workload = result
        if let failure = result.failure { report.failure = failure; return finish(report) }
        if o.verify {
            progress("verify: reading everything back")
            let back = try runPhase(Phase(kind: .readback, readPercent: 100, random: false, onePass: true,
                                          deadline: .max, measureStart: 0, measureEnd: 0))
            report.verifyReads = back.allCompleted
            if let failure = back.failure { report.failure = failure; return finish(report) }
            report.verified = true
        }
        return finish(report)
    }

    func finish(_ report: Report) -> Report {
        // What QEMU does when it stops the device: GET_VRING_BASE per ring, then goes away.
        if report.failure == nil {
            for i in rings.indices { _ = try? frontend.getVringBase(i) }
        }
        frontend.disconnect()
        return report
    }

    // MARK: Setup

    func connect() throws {
        frontend = try VhostUserFrontend(socketPath: o.socket, timeout: 10)
        var wanted: VirtioFeatures = [.version1, .protocolFeatures]
        if o.useEventIndex { wanted.insert(.eventIndex) }
        if o.useIndirect { wanted.insert(.indirectDescriptors) }
        let vrings = try frontend.negotiate(features: wanted, protocolFeatures: VhostUserFrontend.qemuProtocolFeatures,
                                            requireProtocolFeatures: false, fallbackQueueCount: 3)
        guard vrings >= 2 + o.queues else {
            throw BenchFailure("\(o.socket): the backend supports \(vrings) vrings, at most \(max(0, vrings - 2)) request queues (--queues \(o.queues))")
        }
        indirect = frontend.features.contains(.indirectDescriptors)
        eventIndex = frontend.features.contains(.eventIndex)

        // Ring size: QEMU's default 128, or what the depth needs (3 descriptors per request
        // without indirect tables).
        let perRequest = indirect ? 1 : 3
        var ringSize = o.ringSize ?? 128
        while ringSize < o.iodepth * perRequest { ringSize *= 2 }
        guard ringSize <= 32768, o.iodepth * perRequest <= ringSize else {
            throw BenchFailure("--iodepth \(o.iodepth) needs \(o.iodepth * perRequest) descriptors, more than --ring-size \(ringSize)")
        }
        if let asked = o.ringSize, asked != ringSize {
            throw BenchFailure("--iodepth \(o.iodepth) needs a ring of at least \(o.iodepth * perRequest) entries (--ring-size \(asked))")
        }

        // Guest RAM: control and event rings, then per request queue its ring, request blocks
        // and data buffers.
        let ringBytes = SplitQueueLayout.descriptorTableBytes(size: UInt16(ringSize))
            + SplitQueueLayout.availRingBytes(size: UInt16(ringSize)) + SplitQueueLayout.usedRingBytes(size: UInt16(ringSize)) + 3 * 4096
        let perQueue = ringBytes + o.iodepth * SlotLayout.bytes + o.iodepth * o.blockSize + 2 * 4096
        let total = (2 * 3 * 4096 + 16 * 4096 + o.queues * perQueue + (2 << 20) - 1) & ~((2 << 20) - 1)
        memory = try SharedGuestMemory(size: total)
        rings = [DriverSplitQueue(memory: memory, size: 16, eventIndex: eventIndex),
                 DriverSplitQueue(memory: memory, size: 16, eventIndex: eventIndex)]
        for _ in 0..<o.queues {
            rings.append(DriverSplitQueue(memory: memory, size: UInt16(ringSize), eventIndex: eventIndex))
        }
        try frontend.startQueues(memory: memory, rings: rings, blockingCalls: true)

        let lunField = VirtioSCSIAddress(target: o.target, lun: o.lun).lunField
        for q in 0..<o.queues {
            let slotGPA = memory.allocate(o.iodepth * SlotLayout.bytes, alignment: 4096)
            let dataGPA = memory.allocate(o.iodepth * o.blockSize, alignment: 4096)
            let vring = q + 2
            guard let kick = frontend.kickFDs[vring], let call = frontend.callFDs[vring] else {
                throw BenchFailure("internal: ring \(vring) has no eventfds")
            }
            workers.append(QueueWorker(queue: q, ring: rings[vring].ring, kickFD: kick, callFD: call,
                                       depth: o.iodepth, indirect: indirect, bs: o.blockSize,
                                       slotArea: memory.pointer(slotGPA, length: o.iodepth * SlotLayout.bytes), slotAreaGPA: slotGPA,
                                       dataArea: memory.pointer(dataGPA, length: o.iodepth * o.blockSize), dataAreaGPA: dataGPA,
                                       lunField: lunField))
        }
    }

    /// TEST UNIT READY (through unit attentions), then READ CAPACITY(16), or (10) if refused.
    func inspectLUN() throws {
        let w = workers[0]
        let lun = "LUN \(o.target):\(o.lun)"
        func run(_ cdb: [UInt8], _ dataIn: Int, _ name: String) throws -> QueueWorker.CommandResult {
            let r = try w.syncCommand(cdb, dataIn: dataIn, timeout: o.timeout)
            // QEMU's contrib vhost-user-scsi (7.2; Scripts/qemu-contrib-scsi.sh) answers every
            // CHECK CONDITION with response VIRTIO_SCSI_S_FAILURE, where virtio v1.2 §5.6.6.1
            // wants VIRTIO_SCSI_S_OK "when the request was completed and the status byte is
            // filled with a SCSI status code". Status and sense are filled in, so judge the
            // command by them; otherwise the unit attention after its login ends the run here.
            let checkConditionAsFailure = r.response == 9 && r.status == 2 && !r.sense.isEmpty
            if r.response != 0 && !checkConditionAsFailure {
                var what = "virtio-scsi response \(QueueWorker.responseName(r.response))"
                if r.response == 0xFF {
                    // syncCommand presets the byte to 0xFF; the contrib backend leaves it so
                    // for a LUN other than 0:0, which is all it serves.
                    what = "the backend left the virtio-scsi response unset"
                    if r.status == 2 && r.sense.count >= 14 {
                        what += " (SCSI status 0x2" + r.sense.withUnsafeBytes { QueueWorker.senseText($0.baseAddress!) } + ")"
                    }
                }
                throw BenchFailure("\(lun): \(name) failed: \(what)")
            }
            return r
        }
        var ready = false
        for _ in 0..<8 {
            let r = try run([0, 0, 0, 0, 0, 0], 0, "TEST UNIT READY")
            if r.status == 0 { ready = true; break }
            // CHECK CONDITION with UNIT ATTENTION (after login, reset, capacity change): again.
            let key = r.sense.count >= 3 ? (r.sense[0] & 0x7F >= 0x72 ? r.sense[1] : r.sense[2]) & 0xF : 0
            if r.status != 2 || key != 6 {
                throw BenchFailure("\(lun): TEST UNIT READY failed: SCSI status 0x\(String(r.status, radix: 16))"
                                   + (r.sense.isEmpty ? "" : r.sense.withUnsafeBytes { QueueWorker.senseText($0.baseAddress!) }))
            }
        }
        guard ready else { throw BenchFailure("\(lun): not ready (unit attention after 8 tries)") }
        let r16 = try run([0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], 32, "READ CAPACITY(16)")
        if r16.status == 0 {
            let last = r16.data[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let size = r16.data[8..<12].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            blockCount = last &+ 1
            logicalBlock = Int(size)
        } else {
            let r10 = try run([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8, "READ CAPACITY(10)")
            guard r10.status == 0 else {
                throw BenchFailure("\(lun): READ CAPACITY failed: SCSI status 0x\(String(r10.status, radix: 16))"
                                   + (r10.sense.count < 14 ? "" : r10.sense.withUnsafeBytes { QueueWorker.senseText($0.baseAddress!) }))
            }
            blockCount = UInt64(r10.data[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }) + 1
            logicalBlock = Int(r10.data[4..<8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        }
        guard logicalBlock >= 512, logicalBlock <= 65536, logicalBlock & (logicalBlock - 1) == 0 else {
            throw BenchFailure("\(lun): unusable logical block size \(logicalBlock)")
        }
        guard o.blockSize % logicalBlock == 0 else {
            throw BenchFailure("--bs \(o.blockSize) is not a multiple of the LUN's block size \(logicalBlock)")
        }
    }

    func rangeInBytes() throws -> UInt64 {
        let capacity = blockCount * UInt64(logicalBlock)
        let range = o.size ?? capacity
        guard range <= capacity else { throw BenchFailure("--size \(range) is beyond the LUN's capacity (\(capacity) bytes)") }
        let rounded = range / UInt64(o.blockSize) * UInt64(o.blockSize)
        guard rounded > 0 else { throw BenchFailure("the LUN (\(capacity) bytes) is smaller than --bs \(o.blockSize)") }
        return rounded
    }

    // MARK: Running a phase

    struct PhaseResult {
        var histogram = LatencyHistogram()
        var completed: UInt64 = 0
        var reads: UInt64 = 0
        var writes: UInt64 = 0
        var allCompleted: UInt64 = 0
        var errors: UInt64 = 0
        var verifyFailures: UInt64 = 0
        var seconds = 0.0
        var backendCPU: Double? = nil
        var ownCPU = 0.0
        var failure: String? = nil
    }

    /// Starts one thread per queue, watches for a stalled or vanished backend, samples CPU
    /// time at the edges of the measured window, joins the threads and merges their results.
    func runPhase(_ phase: Phase) throws -> PhaseResult {
        var threads: [pthread_t] = []
        for w in workers {
            w.finished.store(false, ordering: .relaxed)
            w.abort.store(false, ordering: .relaxed)
            w.progress.store(0, ordering: .relaxed)
            var thread = pthread_t()
            let context = Unmanaged.passRetained(WorkerStart(worker: w, phase: phase)).toOpaque()
            let rc = pthread_create(&thread, nil, { raw in
                let start = Unmanaged<WorkerStart>.fromOpaque(raw!).takeRetainedValue()
                start.worker.run(start.phase)
                return nil
            }, context)
            guard rc == 0 else { throw DriverError.system("pthread_create", rc) }
            threads.append(thread)
        }
        var result = PhaseResult()
        var backendAtStart: Double? = nil, ownAtStart = 0.0
        var sampledStart = phase.kind != .workload, sampledEnd = phase.kind != .workload
        var lastProgress: UInt64 = 0
        var lastProgressTime = monotonicSeconds()
        var failure: String? = nil
        while !workers.allSatisfy({ $0.finished.load(ordering: .acquiring) }) {
            let now = monotonicNanoseconds()
            if !sampledStart && now >= phase.measureStart {
                sampledStart = true
                backendAtStart = o.backendPID.flatMap(ProcessCPU.seconds(pid:))
                ownAtStart = ProcessCPU.own()
            }
            if !sampledEnd && now >= phase.measureEnd {
                sampledEnd = true
                if let pid = o.backendPID, let a = backendAtStart, let b = ProcessCPU.seconds(pid: pid) { result.backendCPU = b - a }
                result.ownCPU = ProcessCPU.own() - ownAtStart
            }
            // Sleep until the next edge, at most 20 ms, watching the vhost-user socket.
            var wait = 20_000_000 as UInt64
            if !sampledStart { wait = min(wait, phase.measureStart - now) }
            if !sampledEnd && phase.measureEnd > now { wait = min(wait, phase.measureEnd - now) }
            if failure == nil, let fd = frontend.socketFD {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, Int32((wait + 999_999) / 1_000_000)) > 0 {
                    var byte: UInt8 = 0
                    if p.revents & Int16(POLLHUP | POLLERR) != 0 || recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) <= 0 {
                        failure = "\(o.socket): the backend closed the connection"
                    }
                }
            } else {
                usleep(UInt32(wait / 1000))
            }
            let total = workers.reduce(0) { $0 + $1.progress.load(ordering: .relaxed) }
            if total != lastProgress {
                lastProgress = total
                lastProgressTime = monotonicSeconds()
            } else if failure == nil, monotonicSeconds() - lastProgressTime > o.timeout {
                failure = "no request completed for \(o.timeout) s: the backend stopped answering"
            }
            if failure != nil {
                // Wake every worker out of its read(2) on the call eventfd.
                for w in workers {
                    w.abort.store(true, ordering: .relaxed)
                    var one: UInt64 = 1
                    _ = write(w.callFD, &one, 8)
                }
            }
        }
        for t in threads { pthread_join(t, nil) }
        if !sampledEnd, failure == nil {
            // The workers drained and returned before this loop woke at the window's end.
            if let pid = o.backendPID, let a = backendAtStart, let b = ProcessCPU.seconds(pid: pid) { result.backendCPU = b - a }
            result.ownCPU = ProcessCPU.own() - ownAtStart
        }
        result.seconds = Double(phase.measureEnd &- phase.measureStart) / 1e9
        for w in workers {
            result.histogram.merge(w.histogram)
            result.completed += w.completed
            result.reads += w.reads
            result.writes += w.writes
            result.allCompleted += w.allCompleted
            result.errors += w.errors
            result.verifyFailures += w.verifyFailures
            if failure == nil, let e = w.firstError { failure = e }
        }
        if failure == nil && (result.errors > 0 || result.verifyFailures > 0) { failure = "I/O errors" }
        result.failure = failure
        return result
    }
}

/// What a worker thread is started with.
final class WorkerStart: @unchecked Sendable {
    let worker: QueueWorker
    let phase: Phase
    init(worker: QueueWorker, phase: Phase) { self.worker = worker; self.phase = phase }
}
