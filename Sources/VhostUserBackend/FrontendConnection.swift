import Dispatch
import Glibc
import ServerLog
import VhostUserProtocol
import VirtioCore

/// Why a message was refused. `fatal` ones drop the connection (the frontend cannot be
/// trusted to continue); others are answered with a failure when REPLY_ACK allows.
struct MessageError: Error, CustomStringConvertible {
    var description: String
    var fatal = false
}

/// Serves one frontend connection: decodes each message, keeps the device state the
/// protocol describes (features, memory table, rings) and starts and stops rings on the
/// device. Everything runs on `controlQueue`.
final class FrontendConnection: @unchecked Sendable {
    // @unchecked: confined to controlQueue.
    let channel: MessageChannel
    let device: VhostUserDevice
    let controlQueue: DispatchQueue
    let options: BackendOptions
    private var readSource: DispatchSourceRead?
    private var onClose: (() -> Void)?

    private var ackedFeatures: VirtioFeatures = []
    private var ackedProtocolFeatures: VhostUserProtocolFeatures = []
    private var memory = MemoryTableState()
    private var slots: [VringSlot]
    private var status: UInt8 = 0
    /// The log QEMU gave with SET_LOG_BASE; in use while VHOST_F_LOG_ALL is acknowledged.
    private var dirtyLog: DirtyLog?
    /// The inflight-tracking region from SET_INFLIGHT_FD.
    private var inflight: InflightRegion?
    private var closed = false

    init(fd: Int32, device: VhostUserDevice, controlQueue: DispatchQueue, options: BackendOptions,
         onClose: @escaping () -> Void) {
        channel = MessageChannel(fd: fd)
        self.device = device
        self.controlQueue = controlQueue
        self.options = options
        self.onClose = onClose
        slots = (0..<device.queueCount).map(VringSlot.init(index:))
    }

    /// Features offered in GET_FEATURES: the device's plus what the ring code implements.
    var offeredFeatures: VirtioFeatures {
        device.virtioFeatures.union([.version1, .indirectDescriptors, .eventIndex, .notifyOnEmpty, .protocolFeatures,
                                     .logAll])
    }

    static let offeredProtocolFeatures: VhostUserProtocolFeatures = [
        .mq, .logSHMFD, .replyAck, .inflightSHMFD, .configureMemSlots, .resetDevice, .status,
    ]

    /// Answer to GET_MAX_MEM_SLOTS; lookups are a binary search, so many regions are cheap.
    static let maxMemorySlots: UInt64 = 509

    func start() {
        do {
            let source = try makeReadSource(watching: channel.fd, queue: controlQueue) { @Sendable [weak self] _ in
                self?.readable()
            }
            readSource = source
            source.resume()
        } catch {
            Log.error("vhost-user: cannot watch the connection: \(error)")
            close(reason: "\(error)")
        }
    }

    /// Stops every ring (waiting for in-flight requests), unmaps memory and closes.
    func close(reason: String) {
        guard !closed else { return }
        closed = true
        Log.info("frontend disconnected: \(reason)")
        readSource?.cancel()
        readSource = nil
        for slot in slots {
            stopRing(slot, closeKick: true)
            slot.clear()
        }
        memory.clear()
        let callback = onClose
        onClose = nil
        callback?()
    }

    private func readable() {
        guard !closed else { return }
        let message: ReceivedMessage
        do {
            message = try channel.receive()
        } catch MessageChannel.ReceiveError.closed {
            close(reason: "connection closed by the frontend")
            return
        } catch {
            Log.error("vhost-user: \(error); dropping the connection")
            close(reason: "protocol error")
            return
        }
        handle(message)
    }

    private func handle(_ message: ReceivedMessage) {
        let header = message.header
        guard let request = VhostUserRequest(rawValue: header.request) else {
            message.closeFileDescriptors()
            fail(header: header, request: nil, MessageError(description: "unknown request \(header.request)", fatal: true))
            return
        }
        Log.debug("vhost-user: \(request) size=\(header.size) fds=\(message.fds.count)")
        do {
            let reply = try dispatch(request, message)
            if let reply {
                send(request, payload: reply)
            } else if wantsAck(header) {
                send(request, payload: u64(0))
            }
        } catch {
            fail(header: header, request: request, error)
        }
    }

    private func fail(header: VhostUserHeader, request: VhostUserRequest?, _ error: MessageError) {
        let name = request.map { "\($0)" } ?? "request \(header.request)"
        if !error.fatal, wantsAck(header) {
            Log.error("vhost-user: \(name) refused: \(error)")
            send(request, raw: header.request, payload: u64(1))
        } else {
            Log.error("vhost-user: \(name) refused: \(error); dropping the connection")
            close(reason: "protocol error")
        }
    }

    private func wantsAck(_ header: VhostUserHeader) -> Bool {
        header.flags.contains(.needReply) && ackedProtocolFeatures.contains(.replyAck)
    }

    private func send(_ request: VhostUserRequest?, raw: UInt32? = nil, payload: [UInt8], fds: [Int32] = []) {
        guard !closed else { return }
        do {
            try channel.send(request: raw ?? request!.rawValue, flags: [.version1, .reply], payload: payload, fds: fds)
        } catch {
            close(reason: "cannot reply: \(error)")
        }
    }

    private func u64(_ value: UInt64) -> [UInt8] {
        var b: [UInt8] = []
        b.appendUnaligned(value)
        return b
    }

    // MARK: - Decoding helpers

    private func expectFDs(_ message: ReceivedMessage, _ count: Int, _ request: VhostUserRequest) throws(MessageError) {
        guard message.fds.count == count else {
            message.closeFileDescriptors()
            throw MessageError(description: "\(request): \(message.fds.count) file descriptors, expected \(count)", fatal: true)
        }
    }

    private func payloadU64(_ message: ReceivedMessage, _ request: VhostUserRequest) throws(MessageError) -> UInt64 {
        guard message.payload.count == 8 else {
            message.closeFileDescriptors()
            throw MessageError(description: "\(request): payload is \(message.payload.count) bytes, expected 8", fatal: true)
        }
        var r = PayloadReader(message.payload)
        return r.read()
    }

    private func vringState(_ message: ReceivedMessage, _ request: VhostUserRequest) throws(MessageError) -> (VringSlot, UInt32) {
        guard message.payload.count == VringState.byteCount else {
            throw MessageError(description: "\(request): payload is \(message.payload.count) bytes, expected 8", fatal: true)
        }
        let state = VringState(decoding: message.payload)
        return (try slot(Int(state.index), request), state.num)
    }

    private func slot(_ index: Int, _ request: VhostUserRequest) throws(MessageError) -> VringSlot {
        guard index >= 0, index < slots.count else {
            throw MessageError(description: "\(request): ring \(index) does not exist (the device has \(slots.count))")
        }
        return slots[index]
    }

    // MARK: - Requests

    /// Handles one request; returns the reply payload for requests that have one.
    private func dispatch(_ request: VhostUserRequest, _ message: ReceivedMessage) throws(MessageError) -> [UInt8]? {
        // Requests that carry fds close them themselves; all others must carry none.
        switch request {
        case .setMemTable, .addMemReg, .remMemReg, .setVringKick, .setVringCall, .setVringErr,
             .setLogBase, .setLogFD, .setInflightFD:
            break
        default:
            try expectFDs(message, 0, request)
        }
        switch request {
        case .getFeatures:
            return u64(offeredFeatures.rawValue)
        case .setFeatures:
            let requested = VirtioFeatures(rawValue: try payloadU64(message, request))
            // QEMU passes through device bits it handles itself (VIRTIO_SCSI_F_CHANGE with
            // param_change=on) although they were not offered: keep only what was offered.
            let unoffered = requested.subtracting(offeredFeatures)
            if !unoffered.isEmpty {
                Log.debug("vhost-user: SET_FEATURES includes \(unoffered), never offered; ignoring those bits")
            }
            let features = requested.intersection(offeredFeatures)
            let loggingChanged = features.contains(.logAll) != ackedFeatures.contains(.logAll)
            ackedFeatures = features
            if loggingChanged {
                Log.info("vhost-user: dirty logging \(features.contains(.logAll) ? "on" : "off")")
                updateLogging()
            }
            // Without VHOST_USER_F_PROTOCOL_FEATURES rings are enabled from the start.
            if !features.contains(.protocolFeatures) {
                for slot in slots where !slot.enabled {
                    slot.enabled = true
                    try startIfReady(slot)
                }
            }
            Log.debug("vhost-user: features \(features) acknowledged")
            return nil
        case .getProtocolFeatures:
            return u64(Self.offeredProtocolFeatures.rawValue)
        case .setProtocolFeatures:
            let features = VhostUserProtocolFeatures(rawValue: try payloadU64(message, request))
            guard Self.offeredProtocolFeatures.isSuperset(of: features) else {
                throw MessageError(description: "SET_PROTOCOL_FEATURES: \(features) includes features never offered")
            }
            ackedProtocolFeatures = features
            return nil
        case .setOwner:
            return nil
        case .resetOwner:
            // Deprecated; treated as "disable all rings" (vhost-user spec).
            for slot in slots { stopRing(slot, closeKick: false); slot.enabled = false }
            return nil
        case .getQueueNum:
            return u64(UInt64(device.queueCount))
        case .getMaxMemSlots:
            return u64(Self.maxMemorySlots)
        case .setMemTable:
            return try setMemTable(message)
        case .addMemReg:
            try expectFDs(message, 1, request)
            defer { message.closeFileDescriptors() }
            let region: SingleMemoryRegion
            do { region = try SingleMemoryRegion(decoding: message.payload, request: "ADD_MEM_REG") } catch {
                throw MessageError(description: error.description)
            }
            guard memory.count < Int(Self.maxMemorySlots) else { throw MessageError(description: "ADD_MEM_REG: no free slot") }
            do { try memory.add(region.region, fd: message.fds[0]) } catch {
                throw MessageError(description: "ADD_MEM_REG: \(error)")
            }
            try memoryChanged()
            return nil
        case .remMemReg:
            message.closeFileDescriptors()  // the spec lets a frontend send one; we never need it
            let region: SingleMemoryRegion
            do { region = try SingleMemoryRegion(decoding: message.payload, request: "REM_MEM_REG") } catch {
                throw MessageError(description: error.description)
            }
            let remaining = memory.removing(region.region)
            for slot in slots where slot.running != nil {
                if case .failure = slot.translate(with: remaining) {
                    throw MessageError(description: "REM_MEM_REG: ring \(slot.index) lives in that region and is running")
                }
            }
            guard memory.remove(region.region) else {
                throw MessageError(description: "REM_MEM_REG: no such region (guest 0x\(String(region.region.guestPhysicalAddress, radix: 16)))")
            }
            try memoryChanged()
            return nil
        case .setVringNum:
            let (slot, num) = try vringState(message, request)
            guard SplitQueueLayout.isValidSize(num) else {
                throw MessageError(description: "SET_VRING_NUM: ring \(slot.index) size \(num) is not a power of 2 in 1...32768")
            }
            guard slot.running == nil else { throw MessageError(description: "SET_VRING_NUM: ring \(slot.index) is running") }
            slot.size = UInt16(num)
            return nil
        case .setVringAddr:
            guard message.payload.count == VringAddress.byteCount else {
                throw MessageError(description: "SET_VRING_ADDR: payload is \(message.payload.count) bytes, expected 40", fatal: true)
            }
            let address = VringAddress(decoding: message.payload)
            let slot = try slot(Int(address.index), request)
            if let why = address.alignmentError { throw MessageError(description: "SET_VRING_ADDR: \(why)") }
            slot.address = address
            if slot.running != nil {
                try relocate(slot)
                updateLogging()
            }
            return nil
        case .setVringBase:
            let (slot, num) = try vringState(message, request)
            guard num <= UInt32(UInt16.max) else {
                throw MessageError(description: "SET_VRING_BASE: ring \(slot.index) base \(num) is larger than 65535")
            }
            guard slot.running == nil else { throw MessageError(description: "SET_VRING_BASE: ring \(slot.index) is running") }
            slot.base = UInt16(num)
            return nil
        case .getVringBase:
            let (slot, _) = try vringState(message, request)
            stopRing(slot, closeKick: true)
            return VringState(index: UInt32(slot.index), num: UInt32(slot.base)).encoded()
        case .setVringKick:
            let (slot, fd) = try ringFD(message, request)
            guard let fd else {
                throw MessageError(description: "SET_VRING_KICK: ring \(slot.index) without a kick fd (polling) is not supported")
            }
            if slot.running != nil { stopRing(slot, closeKick: true) }
            closeOwned(slot.kickFD)
            slot.kickFD = fd
            // Without protocol features a kick fd alone starts the ring (vhost-user spec, "Ring states").
            if !ackedFeatures.contains(.protocolFeatures) { slot.enabled = true }
            try startIfReady(slot)
            return nil
        case .setVringCall:
            let (slot, fd) = try ringFD(message, request)
            slot.notifier.replace(fd: fd ?? -1)
            if fd != nil, let vring = slot.running {
                // Interrupts sent to the previous fd may be lost: QEMU first gives its masked
                // notifier and the guest's own only after the ring is enabled (seen after a
                // reconnect, with requests resubmitted at once). With EVENT_IDX a lost
                // interrupt is a hung guest, so interrupt once more; a spurious one is harmless.
                vring.queue.async {
                    vring.ring.resetSignalled()
                    vring.notifier.signal()
                }
            }
            return nil
        case .setVringErr:
            let (_, fd) = try ringFD(message, request)
            closeOwned(fd ?? -1)  // the server reports ring errors in its log instead
            return nil
        case .setVringEnable:
            let (slot, num) = try vringState(message, request)
            guard ackedFeatures.contains(.protocolFeatures) else {
                throw MessageError(description: "SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES")
            }
            guard num <= 1 else { throw MessageError(description: "SET_VRING_ENABLE: \(num) is neither 0 nor 1") }
            slot.enabled = num == 1
            if slot.enabled { try startIfReady(slot) } else { stopRing(slot, closeKick: false) }
            return nil
        case .setStatus:
            let value = try payloadU64(message, request)
            guard value <= 0xFF else { throw MessageError(description: "SET_STATUS: \(value) is not a status byte") }
            status = UInt8(value)
            return nil
        case .getStatus:
            return u64(UInt64(status))
        case .resetDevice:
            for slot in slots {
                stopRing(slot, closeKick: true)
                slot.clear()
            }
            ackedFeatures = []
            status = 0
            return nil
        case .setLogBase:
            try expectFDs(message, 1, request)
            defer { message.closeFileDescriptors() }
            guard ackedProtocolFeatures.contains(.logSHMFD) else {
                throw MessageError(description: "SET_LOG_BASE without the LOG_SHMFD protocol feature", fatal: true)
            }
            guard message.payload.count == 16 else {
                throw MessageError(description: "SET_LOG_BASE: payload is \(message.payload.count) bytes, expected 16", fatal: true)
            }
            var r = PayloadReader(message.payload)
            let size: UInt64 = r.read()
            let offset: UInt64 = r.read()
            do {
                dirtyLog = try DirtyLog(fd: message.fds[0], size: size, offset: offset)
            } catch {
                throw MessageError(description: "SET_LOG_BASE: \(error)", fatal: true)
            }
            Log.info("vhost-user: dirty log of \(size) bytes (guest memory up to \((size * 8 * 4096) >> 20) MiB)")
            updateLogging()
            // With LOG_SHMFD the frontend always waits for this reply (vhost-user spec).
            return u64(0)
        case .getInflightFD:
            let (queues, queueSize) = try inflightDescription(message, request)
            let region: (fd: Int32, size: UInt64)
            do { region = try InflightRegion.create(queueCount: queues, queueSize: queueSize) } catch {
                throw MessageError(description: "GET_INFLIGHT_FD: \(error)")
            }
            defer { closeOwned(region.fd) }
            send(request, payload: Self.inflightPayload(size: region.size, queues: queues, queueSize: queueSize),
                 fds: [region.fd])
            return nil
        case .setInflightFD:
            try expectFDs(message, 1, request)
            defer { message.closeFileDescriptors() }
            let (queues, queueSize) = try inflightDescription(message, request)
            var r = PayloadReader(message.payload)
            let size: UInt64 = r.read()
            let offset: UInt64 = r.read()
            guard !slots.contains(where: { $0.running != nil }) else {
                throw MessageError(description: "SET_INFLIGHT_FD while rings are running")
            }
            do {
                inflight = try InflightRegion(fd: message.fds[0], size: size, offset: offset,
                                              queueCount: queues, queueSize: queueSize)
            } catch {
                throw MessageError(description: "SET_INFLIGHT_FD: \(error)")
            }
            return nil
        case .setLogFD:
            try expectFDs(message, 1, request)
            message.closeFileDescriptors()  // log-change notifications are not used
            return nil
        case .sendRARP, .netSetMTU, .setBackendReqFD, .iotlbMsg, .setVringEndian,
             .getConfig, .setConfig:
            throw MessageError(description: "\(request) belongs to a feature this backend did not offer", fatal: true)
        }
    }

    /// VhostUserInflight: mmap_size u64, mmap_offset u64, num_queues u16, queue_size u16 (QEMU
    /// sends the C struct's 24 bytes, padding included).
    private func inflightDescription(_ message: ReceivedMessage, _ request: VhostUserRequest) throws(MessageError) -> (Int, UInt16) {
        guard ackedProtocolFeatures.contains(.inflightSHMFD) else {
            throw MessageError(description: "\(request) without the INFLIGHT_SHMFD protocol feature", fatal: true)
        }
        guard (20...24).contains(message.payload.count) else {
            throw MessageError(description: "\(request): payload is \(message.payload.count) bytes, expected 24", fatal: true)
        }
        var r = PayloadReader(message.payload)
        _ = r.read(UInt64.self)
        _ = r.read(UInt64.self)
        let queues: UInt16 = r.read()
        let queueSize: UInt16 = r.read()
        guard queues >= 1, Int(queues) <= slots.count, SplitQueueLayout.isValidSize(UInt32(queueSize)) else {
            throw MessageError(description: "\(request): \(queues) queues of \(queueSize) entries is not valid for this device")
        }
        return (Int(queues), queueSize)
    }

    private static func inflightPayload(size: UInt64, queues: Int, queueSize: UInt16) -> [UInt8] {
        var b: [UInt8] = []
        b.appendUnaligned(size)
        b.appendUnaligned(UInt64(0))
        b.appendUnaligned(UInt16(queues))
        b.appendUnaligned(queueSize)
        b.appendUnaligned(UInt32(0))
        return b
    }

    /// Decodes the u64 of SET_VRING_KICK/CALL/ERR: ring index in bits 0-7, bit 8 = no fd.
    private func ringFD(_ message: ReceivedMessage, _ request: VhostUserRequest) throws(MessageError) -> (VringSlot, Int32?) {
        let value = try payloadU64(message, request)
        let noFD = value & 0x100 != 0
        guard value & ~UInt64(0x1FF) == 0 else {
            message.closeFileDescriptors()
            throw MessageError(description: "\(request): reserved bits set in 0x\(String(value, radix: 16))", fatal: true)
        }
        try expectFDs(message, noFD ? 0 : 1, request)
        let slot: VringSlot
        do { slot = try self.slot(Int(value & 0xFF), request) } catch {
            message.closeFileDescriptors()
            throw error
        }
        return (slot, noFD ? nil : message.fds[0])
    }

    private func setMemTable(_ message: ReceivedMessage) throws(MessageError) -> [UInt8]? {
        defer { message.closeFileDescriptors() }
        let table: MemoryTable
        do { table = try MemoryTable(decoding: message.payload, fdCount: message.fds.count) } catch {
            throw MessageError(description: error.description, fatal: true)
        }
        do { try memory.replace(with: table, fds: message.fds) } catch {
            throw MessageError(description: "SET_MEM_TABLE: \(error)")
        }
        let summary = table.regions.map {
            "guest 0x\(String($0.guestPhysicalAddress, radix: 16))+0x\(String($0.size, radix: 16))"
        }.joined(separator: ", ")
        Log.info("vhost-user: memory table: \(summary)")
        try memoryChanged()
        return nil
    }

    // MARK: - Ring lifecycle

    /// Starts `slot`'s ring if it is fully configured, enabled and not running.
    private func startIfReady(_ slot: VringSlot) throws(MessageError) {
        guard slot.running == nil, slot.enabled, slot.kickFD >= 0, slot.size > 0, slot.address != nil,
              memory.count > 0 else { return }
        let pointers: (UnsafeMutableRawPointer, UnsafeMutableRawPointer, UnsafeMutableRawPointer)
        switch slot.translate(with: memory.memory) {
        case .success(let p): pointers = p
        case .failure(let error): throw MessageError(description: "ring \(slot.index): \(error)", fatal: true)
        }
        // After a crash the inflight region, not SET_VRING_BASE, knows where the ring stands.
        var nextAvail = slot.base
        var inflightQueue: UnsafeInflightQueue?
        var resubmit: [UInt16] = []
        var counter: UInt64 = 1
        if let inflight, slot.index < inflight.queueCount {
            if inflight.queueSize == slot.size {
                let queue = inflight.queue(slot.index)
                let guestUsed = UInt16(littleEndian: pointers.2.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
                if let recovered = queue.recover(guestUsedIndex: guestUsed, size: slot.size) {
                    nextAvail = recovered.nextAvail
                    resubmit = recovered.resubmit
                    counter = recovered.nextCounter
                    Log.info("ring \(slot.index): resuming at avail index \(nextAvail); resubmitting "
                             + "\(resubmit.count) request(s) in flight before the restart")
                }
                inflightQueue = queue
            } else {
                Log.warning("ring \(slot.index): inflight region is for \(inflight.queueSize) entries, the ring has "
                            + "\(slot.size); not tracking it")
            }
        }
        let ring = UnsafeSplitQueue(size: slot.size, descriptorTable: pointers.0, avail: pointers.1, used: pointers.2,
                                    nextAvail: nextAvail, eventIndex: ackedFeatures.contains(.eventIndex),
                                    notifyOnEmpty: ackedFeatures.contains(.notifyOnEmpty))
        let queue = device.dispatchQueue(forVring: slot.index)
        let vring = Vring(index: slot.index, queue: queue, ring: ring, memory: memory.memory,
                          negotiatedFeatures: ackedFeatures, notifier: slot.notifier,
                          inflight: inflightQueue, resubmit: resubmit, inflightCounter: counter)
        vring.dirtyLog = ackedFeatures.contains(.logAll) ? dirtyLog : nil
        vring.usedRingLogAddress = slot.usedRingLogAddress
        let kickFD = slot.kickFD
        _ = fcntl(kickFD, F_SETFL, fcntl(kickFD, F_GETFL) | O_NONBLOCK)
        let device = self.device
        slot.running = vring
        Log.info("ring \(slot.index) started: size \(slot.size), base \(slot.base)")
        let watch: Result<KickWatch, any Error> = queue.sync {
            device.start(vring)
            // Requests made available before the kick fd existed would otherwise wait.
            device.kick(vring)
            // Watched from the ring's queue, so a poller's first kick waits until this block ends.
            return Result { try KickWatch.start(kickFD: kickFD, queue: queue) { device.kick(vring) } }
        }
        switch watch {
        case .success(let watch):
            slot.kickWatch = watch
        case .failure(let error):
            stopRing(slot, closeKick: false)
            throw MessageError(description: "ring \(slot.index): cannot watch the kick fd: \(error)")
        }
    }

    /// Stops `slot`'s ring if it runs: no new requests are taken, in-flight ones finish, and
    /// the avail position is kept in `slot.base` (the value GET_VRING_BASE reports).
    private func stopRing(_ slot: VringSlot, closeKick: Bool) {
        if let vring = slot.running {
            let drained = DispatchSemaphore(value: 0)
            let device = self.device
            let watch = slot.kickWatch
            vring.queue.sync {
                watch?.cancel()
                device.stop(vring) { drained.signal() }
            }
            if drained.wait(timeout: .now() + options.drainTimeout) == .timedOut {
                Log.error("ring \(slot.index): requests still in flight after \(options.drainTimeout); "
                          + "aborting them and reporting the ring stopped")
                vring.queue.sync { device.abandon(vring) }
            }
            slot.base = vring.queue.sync { vring.ring.nextAvail }
            slot.notifier.dropPending()
            slot.running = nil
            slot.kickWatch = nil
            Log.info("ring \(slot.index) stopped at avail index \(slot.base)")
        }
        if closeKick {
            closeOwned(slot.kickFD)
            slot.kickFD = -1
        }
    }

    /// The memory table changed: running rings move to the new snapshot; in-flight requests
    /// keep the one they were translated with.
    private func memoryChanged() throws(MessageError) {
        for slot in slots where slot.running != nil {
            try relocate(slot)
        }
        for slot in slots where slot.running == nil {
            try startIfReady(slot)
        }
    }

    /// Hands every running ring the log to use: the current one while VHOST_F_LOG_ALL is on.
    private func updateLogging() {
        let log = ackedFeatures.contains(.logAll) ? dirtyLog : nil
        for slot in slots {
            guard let vring = slot.running else { continue }
            let usedRingLogAddress = slot.usedRingLogAddress
            vring.queue.sync {
                vring.dirtyLog = log
                vring.usedRingLogAddress = usedRingLogAddress
            }
        }
    }

    private func relocate(_ slot: VringSlot) throws(MessageError) {
        guard let vring = slot.running else { return }
        let snapshot = memory.memory
        switch slot.translate(with: snapshot) {
        case .success(let p):
            vring.queue.sync {
                vring.ring.relocate(descriptorTable: p.0, avail: p.1, used: p.2)
                vring.memory = snapshot
            }
        case .failure(let error):
            stopRing(slot, closeKick: false)
            throw MessageError(description: "ring \(slot.index): \(error) after a memory table change")
        }
    }
}
