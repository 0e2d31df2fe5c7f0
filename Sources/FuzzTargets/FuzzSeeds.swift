import VhostUserProtocol
import VirtioCore
import VirtioSCSI

/// Valid (and a few deliberately invalid) inputs for each fuzz target, built with the
/// product's own encoders, so the fuzzers start from messages, chains and requests that
/// reach deep into the code. `FuzzCorpusTests` checks they are in `Fuzz/corpus/<target>/`
/// (and writes them there with FUZZ_WRITE_SEEDS=1).
public enum FuzzSeeds {
    public static let targets = ["message-decoder", "descriptor-chain", "scsi-request", "control-queue",
                                 "frontend-connection"]

    /// Target name -> seed name -> bytes.
    public static func all() -> [String: [String: [UInt8]]] {
        // Guest memory images end in zeros, which the entry points supply themselves.
        func trimmed(_ seeds: [String: [UInt8]]) -> [String: [UInt8]] { seeds.mapValues(trimmingZeros) }
        return ["message-decoder": messages(), "descriptor-chain": trimmed(chains()), "scsi-request": trimmed(requests()),
                "control-queue": trimmed(controls()), "frontend-connection": connections()]
    }

    static func trimmingZeros(_ bytes: [UInt8]) -> [UInt8] {
        Array(bytes[..<((bytes.lastIndex { $0 != 0 } ?? -1) + 1)])
    }

    /// Runs `bytes` through the named target's entry point.
    public static func run(target: String, _ bytes: [UInt8]) {
        switch target {
        case "message-decoder": fuzzMessageDecoder(bytes)
        case "descriptor-chain": fuzzDescriptorChain(bytes)
        case "scsi-request": fuzzSCSIRequest(bytes)
        case "control-queue": fuzzControlQueue(bytes)
        case "frontend-connection": fuzzFrontendConnection(bytes)
        default: preconditionFailure("unknown fuzz target \(target)")
        }
    }

    // MARK: - vhost-user messages

    static func message(_ request: UInt32, flags: UInt32 = 1, _ payload: [UInt8] = [], size: UInt32? = nil) -> [UInt8] {
        var b: [UInt8] = []
        VhostUserHeader(request: request, flags: VhostUserHeaderFlags(rawValue: flags),
                        size: size ?? UInt32(payload.count)).encode(into: &b)
        return b + payload
    }

    static func u64(_ v: UInt64) -> [UInt8] { var b: [UInt8] = []; b.appendUnaligned(v); return b }

    static let region0 = MemoryRegionDescription(guestPhysicalAddress: 0, size: 0x10000, userAddress: 0x7f00_0000_0000,
                                                 mmapOffset: 0)
    static let region1 = MemoryRegionDescription(guestPhysicalAddress: 0x1_0000_0000, size: 0x4000,
                                                 userAddress: 0x7f00_1000_0000, mmapOffset: 0x1000)

    static func messages() -> [String: [UInt8]] {
        let r = VhostUserRequest.self
        var fullTable = MemoryTable(regions: [region0, region1]).encoded()
        fullTable += [UInt8](repeating: 0, count: MemoryTable.payloadSize(regionCount: 8) - fullTable.count)
        let vringAddr = VringAddress(index: 2, flags: 0, descriptorTable: 0x7f00_0000_0000, usedRing: 0x7f00_0000_1000,
                                     availRing: 0x7f00_0000_0800, log: 0).encoded()
        return [
            "get-features": [0] + message(r.getFeatures.rawValue),
            "set-features": [0] + message(r.setFeatures.rawValue, flags: 9, u64(0x1_7000_0000)),
            "set-mem-table-1": [1] + message(r.setMemTable.rawValue, flags: 9, MemoryTable(regions: [region0]).encoded()),
            "set-mem-table-2": [2] + message(r.setMemTable.rawValue, MemoryTable(regions: [region0, region1]).encoded()),
            "set-mem-table-full-array": [2] + message(r.setMemTable.rawValue, fullTable),
            "set-mem-table-overlap": [2] + message(r.setMemTable.rawValue, MemoryTable(regions: [region0, region0]).encoded()),
            "add-mem-reg": [1] + message(r.addMemReg.rawValue, SingleMemoryRegion(region: region1).encoded()),
            "rem-mem-reg": [0] + message(r.remMemReg.rawValue, SingleMemoryRegion(region: region1).encoded()),
            "set-vring-addr": [0] + message(r.setVringAddr.rawValue, vringAddr),
            "set-vring-num": [0] + message(r.setVringNum.rawValue, VringState(index: 2, num: 128).encoded()),
            "set-vring-kick": [1] + message(r.setVringKick.rawValue, u64(2)),
            "set-vring-call-nofd": [0] + message(r.setVringCall.rawValue, u64(0x102)),
            "bad-version": [0] + message(r.getFeatures.rawValue, flags: 2),
            "too-large": [0] + message(r.setMemTable.rawValue, size: 5000),
            "stream": [0] + message(r.getFeatures.rawValue) + message(r.setFeatures.rawValue, u64(1 << 32))
                + message(r.setVringNum.rawValue, VringState(index: 0, num: 8).encoded())
                + message(r.setVringAddr.rawValue, vringAddr),
        ]
    }

    // MARK: - Guest memory images

    /// Region contents with a split ring at offset 0 of region 0 (the fuzzers' placement).
    struct RingImage {
        var bytes: [UInt8]
        let ring: RingPlacement
        private var availCount: UInt16 = 0

        init(size: UInt16, length: Int = 8192, offset: Int = 0, existing: [UInt8]? = nil) {
            bytes = existing ?? [UInt8](repeating: 0, count: length)
            ring = RingPlacement(size: size, offset: offset)
        }

        mutating func put<T: FixedWidthInteger>(_ v: T, at offset: Int) {
            withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
        }

        mutating func put(_ data: [UInt8], at offset: Int) {
            for (i, b) in data.enumerated() { bytes[offset + i] = b }
        }

        mutating func descriptor(_ i: Int, _ address: UInt64, _ length: Int, flags: UInt16 = 0, next: UInt16 = 0) {
            descriptor(at: ring.descriptorOffset + 16 * i, address, length, flags: flags, next: next)
        }

        mutating func descriptor(at offset: Int, _ address: UInt64, _ length: Int, flags: UInt16 = 0, next: UInt16 = 0) {
            put(address, at: offset)
            put(UInt32(length), at: offset + 8)
            put(flags, at: offset + 12)
            put(next, at: offset + 14)
        }

        /// Makes `head` available (avail ring entry and idx).
        mutating func publish(_ head: UInt16) {
            put(head, at: ring.availOffset + 4 + 2 * Int(availCount % ring.size))
            availCount += 1
            put(availCount, at: ring.availOffset + 2)
        }
    }

    static let next: UInt16 = 1, write: UInt16 = 2, indirect: UInt16 = 4

    static func chains() -> [String: [UInt8]] {
        func seed(_ layout: UInt8, size: UInt8 = 3, accessors: Bool = true, _ build: (inout RingImage) -> Void) -> [UInt8] {
            var image = RingImage(size: 1 << UInt16(size), length: layout == 0 ? 8192 : 8192 + 4096)
            build(&image)
            return [size | layout << 3 | (accessors ? 0x20 : 0), 0, 0] + image.bytes
        }
        return [
            "two-buffers": seed(0) { m in
                m.descriptor(0, 0x400, 51, flags: next, next: 1)
                m.descriptor(1, 0x500, 108, flags: write)
                m.publish(0)
            },
            "three-buffers-two-heads": seed(0) { m in
                m.descriptor(2, 0x400, 51, flags: next, next: 5)
                m.descriptor(5, 0x500, 108, flags: write | next, next: 7)
                m.descriptor(7, 0x600, 512, flags: write)
                m.descriptor(3, 0x800, 64)
                m.publish(2)
                m.publish(3)
            },
            "indirect": seed(0) { m in
                m.descriptor(0, 0x300, 48, flags: indirect)
                m.descriptor(at: 0x300, 0x400, 51, flags: next, next: 1)
                m.descriptor(at: 0x310, 0x500, 108, flags: write | next, next: 2)
                m.descriptor(at: 0x320, 0x600, 512, flags: write)
                m.publish(0)
            },
            "straddle-adjacent-regions": seed(1) { m in
                m.descriptor(0, 0x400, 51, flags: next, next: 1)
                m.descriptor(1, 8192 - 100, 300, flags: write)
                m.publish(0)
            },
            "high-region": seed(2) { m in
                m.descriptor(0, 0x400, 51, flags: next, next: 1)
                m.descriptor(1, 0x1_0000_0000 + 16, 256, flags: write)
                m.publish(0)
            },
            "top-region": seed(3) { m in
                m.descriptor(0, 0x1400, 51, flags: next, next: 1)
                m.descriptor(1, 0xFFFF_FFFF_FFFF_D000, 4096, flags: write)
                m.publish(0)
            },
            "loop": seed(0) { m in
                m.descriptor(0, 0x400, 16, flags: next, next: 1)
                m.descriptor(1, 0x400, 16, flags: next, next: 0)
                m.publish(0)
            },
            "big-ring": seed(0, size: 7) { m in
                m.descriptor(127, 0x1000, 51, flags: next, next: 64)
                m.descriptor(64, 0x1100, 108, flags: write)
                m.publish(127)
            },
        ]
    }

    // MARK: - virtio-scsi requests

    static func header(target: UInt8 = 0, lun: UInt16 = 0, id: UInt64, cdb: [UInt8]) -> [UInt8] {
        var h = VirtioSCSIAddress(target: target, lun: lun).lunField
        withUnsafeBytes(of: id.littleEndian) { h += $0 }
        h += [0, 0, 0] + cdb + [UInt8](repeating: 0, count: VirtioSCSIConfig.cdbSize - cdb.count)
        return h
    }

    static let read10: [UInt8] = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]
    static let write10: [UInt8] = [0x2A, 0, 0, 0, 0, 2, 0, 0, 1, 0]
    static let inquiry: [UInt8] = [0x12, 0, 0, 0, 96, 0]
    static let reportLUNs: [UInt8] = [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]

    /// One request at descriptor `first`... with buffers at `base`: header, data-out,
    /// response, data-in.
    static func addRequest(_ m: inout RingImage, first: Int, base: UInt64, header: [UInt8], dataOut: Int = 0,
                           dataIn: Int = 0, indirectAt: Int? = nil) {
        var buffers: [(UInt64, Int, UInt16)] = [(base, header.count, 0)]
        m.put(header, at: Int(base))
        if dataOut > 0 { buffers.append((base + 0x100, dataOut, 0)) }
        buffers.append((base + 0x400, VirtioSCSICommandResponse.byteCount, write))
        if dataIn > 0 { buffers.append((base + 0x500, dataIn, write)) }
        if let table = indirectAt {
            for (i, b) in buffers.enumerated() {
                let last = i == buffers.count - 1
                m.descriptor(at: table + 16 * i, b.0, b.1, flags: b.2 | (last ? 0 : next), next: UInt16(i + 1))
            }
            m.descriptor(first, UInt64(table), 16 * buffers.count, flags: indirect)
        } else {
            for (i, b) in buffers.enumerated() {
                let last = i == buffers.count - 1
                m.descriptor(first + i, b.0, b.1, flags: b.2 | (last ? 0 : next), next: UInt16(first + i + 1))
            }
        }
        m.publish(UInt16(first))
    }

    static func requests() -> [String: [UInt8]] {
        func seed(script: [UInt8] = [0, 0, 0], _ build: (inout RingImage) -> Void) -> [UInt8] {
            var image = RingImage(size: 8)
            build(&image)
            return [3 | 0x20, 0, 0, UInt8(script.count)] + script + image.bytes
        }
        return [
            "test-unit-ready": seed { addRequest(&$0, first: 0, base: 0x400, header: header(id: 1, cdb: [0, 0, 0, 0, 0, 0])) },
            "read10": seed { addRequest(&$0, first: 0, base: 0x400, header: header(id: 2, cdb: read10), dataIn: 512) },
            "write10": seed { addRequest(&$0, first: 0, base: 0x400, header: header(id: 3, cdb: write10), dataOut: 512) },
            "report-luns": seed { addRequest(&$0, first: 0, base: 0x400, header: header(id: 4, cdb: reportLUNs), dataIn: 256) },
            "inquiry-unconfigured-lun": seed {
                addRequest(&$0, first: 0, base: 0x400, header: header(lun: 5, id: 5, cdb: inquiry), dataIn: 96)
            },
            "bad-target": seed { addRequest(&$0, first: 0, base: 0x400, header: header(target: 3, id: 6, cdb: inquiry), dataIn: 96) },
            "lun-300-check-condition": seed(script: [0, 2, 18, 0x40, 7]) {
                addRequest(&$0, first: 0, base: 0x400, header: header(lun: 300, id: 7, cdb: read10), dataIn: 512)
            },
            "indirect-and-direct": seed(script: [5, 0, 0, 6, 0, 0, 7]) {
                addRequest(&$0, first: 0, base: 0x400, header: header(id: 8, cdb: read10), dataIn: 512, indirectAt: 0x200)
                addRequest(&$0, first: 1, base: 0xC00, header: header(id: 9, cdb: write10), dataOut: 512)
            },
        ]
    }

    // MARK: - Control queue

    static func tmf(_ subtype: VirtioSCSITMFSubtype, lun: UInt16 = 0, id: UInt64 = 0) -> [UInt8] {
        var b: [UInt8] = []
        b.appendUnaligned(UInt32(0).littleEndian)
        b.appendUnaligned(subtype.rawValue.littleEndian)
        b += VirtioSCSIAddress(target: 0, lun: lun).lunField
        b.appendUnaligned(id.littleEndian)
        return b
    }

    static func controls() -> [String: [UInt8]] {
        /// Control ring of 8 at offset 0, request ring of 8 right after it.
        func seed(config: UInt8 = 3, script: [UInt8] = [0, 0, 0],
                  control build: (inout RingImage) -> Void, requests: ((inout RingImage) -> Void)? = nil) -> [UInt8] {
            var control = RingImage(size: 8)
            build(&control)
            var bytes = control.bytes
            var cfg = config
            if let requests {
                var r = RingImage(size: 8, offset: control.ring.end, existing: bytes)
                requests(&r)
                bytes = r.bytes
                cfg |= 0x80
            }
            return [cfg, 0, 0, 0, 0, UInt8(script.count)] + script + bytes
        }
        func request(_ m: inout RingImage, _ index: Int, _ body: [UInt8], response: Int, at base: Int) {
            m.put(body, at: base)
            m.descriptor(index, UInt64(base), body.count, flags: next, next: UInt16(index + 1))
            m.descriptor(index + 1, UInt64(base + 0x80), response, flags: write)
            m.publish(UInt16(index))
        }
        var an: [UInt8] = []
        an.appendUnaligned(UInt32(1).littleEndian)
        an += VirtioSCSIAddress(target: 0, lun: 0).lunField
        an.appendUnaligned(UInt32(0xFF).littleEndian)
        var subscribe = an
        subscribe[0] = 2
        let heldRead: (inout RingImage) -> Void = { r in
            addRequest(&r, first: 0, base: 0x1000, header: header(id: 42, cdb: read10), dataIn: 512)
            addRequest(&r, first: 3, base: 0x1800, header: header(lun: 300, id: 43, cdb: read10), dataIn: 512)
        }
        return [
            "lun-reset": seed(control: { request(&$0, 0, tmf(.logicalUnitReset), response: 1, at: 0x400) }, requests: { _ in }),
            "abort-task-held": seed(config: 3 | 0x40, control: { request(&$0, 0, tmf(.abortTask, id: 42), response: 1, at: 0x400) },
                                    requests: heldRead),
            "abort-task-set-held": seed(config: 3 | 0x40, control: {
                request(&$0, 0, tmf(.abortTaskSet, lun: 300), response: 1, at: 0x400)
                request(&$0, 2, tmf(.queryTaskSet), response: 1, at: 0x500)
            }, requests: heldRead),
            "query-task": seed(config: 3 | 0x40, control: { request(&$0, 0, tmf(.queryTask, id: 42), response: 1, at: 0x400) },
                               requests: heldRead),
            "it-nexus-reset-no-sessions": seed(control: { request(&$0, 0, tmf(.itNexusReset), response: 1, at: 0x400) }),
            "an-query-subscribe": seed(control: {
                request(&$0, 0, an, response: 5, at: 0x400)
                request(&$0, 2, subscribe, response: 5, at: 0x500)
            }),
            "unknown-type-and-lun": seed(control: {
                var bad = tmf(.clearACA, lun: 77)
                request(&$0, 0, bad, response: 1, at: 0x400)
                bad[0] = 9
                request(&$0, 2, bad, response: 1, at: 0x500)
            }, requests: { _ in }),
        ]
    }

    // MARK: - Frontend connections

    static func connections() -> [String: [UInt8]] {
        let r = VhostUserRequest.self
        let user: UInt64 = 0x7f00_0000_0000
        let table = MemoryTable(regions: [MemoryRegionDescription(guestPhysicalAddress: 0, size: 0x10000,
                                                                  userAddress: user, mmapOffset: 0)])
        // Guest RAM: a request ring of 8 at 0 with one READ(10) and one TEST UNIT READY.
        var image = RingImage(size: 8, length: 0x2000)
        addRequest(&image, first: 0, base: 0x400, header: header(id: 1, cdb: read10), dataIn: 512)
        addRequest(&image, first: 4, base: 0xC00, header: header(id: 2, cdb: [0, 0, 0, 0, 0, 0]))
        func msg(_ fdSpec: UInt8, _ request: VhostUserRequest, flags: UInt32 = 1, _ payload: [UInt8] = []) -> [UInt8] {
            [fdSpec] + message(request.rawValue, flags: flags, payload)
        }
        let ack: UInt32 = 9
        var negotiate = msg(0, r.getFeatures) + msg(0, r.getProtocolFeatures)
        negotiate += msg(0, r.setProtocolFeatures, u64(VhostUserProtocolFeatures([.replyAck, .mq, .configureMemSlots,
                                                                                   .resetDevice, .status]).rawValue))
        negotiate += msg(0, r.getQueueNum) + msg(0, r.setOwner, flags: ack)
        negotiate += msg(0, r.setFeatures, flags: ack, u64(VirtioFeatures([.version1, .eventIndex, .indirectDescriptors,
                                                                           .protocolFeatures]).rawValue))
        var start = msg(1, r.setMemTable, flags: ack, table.encoded())   // 1 fd of kind 0: the memfd
        for ring in [0, 2] {
            let offset = UInt64(ring == 2 ? 0 : 0x1800)
            let place = image.ring
            start += msg(0, r.setVringNum, flags: ack, VringState(index: UInt32(ring), num: 8).encoded())
            start += msg(0, r.setVringBase, flags: ack, VringState(index: UInt32(ring), num: 0).encoded())
            start += msg(0, r.setVringAddr, flags: ack, VringAddress(
                index: UInt32(ring), flags: 0, descriptorTable: user + offset + UInt64(place.descriptorOffset),
                usedRing: user + offset + UInt64(place.usedOffset), availRing: user + offset + UInt64(place.availOffset),
                log: 0).encoded())
            start += msg(1 | 1 << 2, r.setVringKick, flags: ack, u64(UInt64(ring)))   // the kick pipe
            start += msg(1 | 2 << 2, r.setVringCall, flags: ack, u64(UInt64(ring)))   // the call pipe
        }
        start += msg(0, r.setVringEnable, flags: ack, VringState(index: 0, num: 1).encoded())
        start += msg(0x40, r.setVringEnable, flags: ack, VringState(index: 2, num: 1).encoded())  // and kick
        let memory = trimmingZeros(image.bytes)
        let prefix = [UInt8(memory.count & 0xFF), UInt8(memory.count >> 8)] + memory
        return [
            "negotiate": [0, 0] + negotiate,
            "full-start-and-io": prefix + negotiate + start + msg(0, r.getVringBase, VringState(index: 2, num: 0).encoded()),
            "reset-device": prefix + negotiate + start + msg(0, r.resetDevice, flags: ack) + msg(0, r.getStatus),
            "rem-mem-reg-in-use": prefix + negotiate + start
                + msg(0, r.remMemReg, flags: ack, SingleMemoryRegion(region: table.regions[0]).encoded()),
            "too-many-fds": [0, 0] + negotiate + [0x10] + message(r.setMemTable.rawValue, flags: ack, table.encoded()),
            "unknown-request": [0, 0] + negotiate + msg(0, r.getFeatures) + [0] + message(999, flags: ack, u64(0)),
        ]
    }
}
