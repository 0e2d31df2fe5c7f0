// @testable imports need a debug build (SwiftPM compiles debug modules with testing
// enabled); in a release build the entry points that drive internal product types trap.
#if DEBUG
import SCSICore
@testable import VhostUserSCSI
import VirtioCore
import VirtioSCSI

/// Fuzzes a request queue end to end in memory: the real `VirtioSCSIDevice` takes chains off
/// a ring in fuzz-built guest memory, splits them into request header, CDB, data-out and
/// response + data-in, answers REPORT LUNS and unconfigured LUNs itself, sends the rest to
/// fake sessions that check every command and answer with scripted status, sense and
/// residual, and encodes the responses into guest memory.
///
/// Input: byte 0 picks the ring size (bits 0-2: 1 << (n % 5)), the memory layout (bits 3-4),
/// EVENT_IDX (bit 5) and NOTIFY_ON_EMPTY (bit 7); bytes 1-2 the device's next avail index;
/// byte 3 a script length L and L script bytes (the sessions' answers); the rest is guest
/// memory, region after region, with the ring at the start of region 0.
///
/// Invariants: every command is well-formed (see `FuzzSCSISession`), the ring drains once the
/// commands completed, and every request taken gets exactly one used element (fewer only
/// when the guest broke the ring, which the device then ignores).
public func fuzzSCSIRequest(_ data: [UInt8]) {
    FuzzDeviceHarness.shared.run { fuzzSCSIRequestExclusive(data) }
}

private func fuzzSCSIRequestExclusive(_ data: [UInt8]) {
    var input = FuzzReader(data)
    let config = input.u8()
    let size = UInt16(1) << UInt16((config & 7) % 5)
    let layout = FuzzGuestMemory.layouts[Int(config >> 3) & 3]
    var features: VirtioFeatures = [.version1, .indirectDescriptors]
    if config & 0x20 != 0 { features.insert(.eventIndex) }
    if config & 0x80 != 0 { features.insert(.notifyOnEmpty) }
    let nextAvail = input.u16()
    let script = input.bytes(Int(input.u8()))
    let contents = input.rest()
    checkWireFormat(script: script, contents: contents)

    let memory = FuzzGuestMemory(layout: layout, contents: contents)
    let placement = RingPlacement(size: size, offset: 0)
    let harness = FuzzDeviceHarness.shared
    harness.environment.begin(memory: memory, script: script, hold: false)
    defer { harness.environment.end() }
    let usedBefore = initialUsedIndex(placement, memory)
    let vring = harness.start(vring: 2, placement: placement, memory: memory, nextAvail: nextAvail, features: features)
    harness.quiesce()
    guard let (taken, used, broken) = harness.stop(vring, usedBefore: usedBefore, availBefore: nextAvail,
                                                     availRing: memory.regions[0].base + placement.availOffset) else { return }
    precondition(used == taken || (broken && used < taken), "\(taken) requests taken, \(used) answered")
    precondition(taken <= Int(size) + 1, "\(taken) requests taken from a ring of \(size) in one kick")
}

/// The pure wire-format pieces: LUN addressing, the request header, CDB lengths, the
/// response encoder and the locally answered commands.
func checkWireFormat(script: [UInt8], contents: [UInt8]) {
    var header = [UInt8](repeating: 0, count: VirtioSCSICommandHeader.byteCount)
    for i in 0..<min(header.count, contents.count) { header[i] = contents[i] }
    header.withUnsafeBytes { raw in
        let parsed = VirtioSCSICommandHeader(raw)
        _ = (parsed.id, parsed.taskAttribute, parsed.priority, parsed.crn)
        if let address = VirtioSCSIAddress(lunField: UnsafeRawBufferPointer(rebasing: raw[0..<8])) {
            precondition(address.lun <= 0x3FFF)
            let again = address.lunField.withUnsafeBytes { VirtioSCSIAddress(lunField: $0) }
            precondition(again == address, "LUN field round trip: \(address) -> \(String(describing: again))")
        } else {
            precondition(raw[0] != 1)
        }
        let cdb = UnsafeRawBufferPointer(rebasing: raw[VirtioSCSICommandHeader.cdbOffset...])
        precondition(cdb.count == VirtioSCSIConfig.cdbSize)
        if let length = CDB.length(opcode: cdb[0], additionalLength: cdb[7]) {
            precondition(length >= 6 && length <= 8 + 255)
        }
        let allocation = LocalResponses.allocationLength(cdb: cdb)
        precondition(allocation >= 0)
    }
    // REPORT LUNS for any set of LUNs: 8 bytes per LUN after the header, list length right.
    let luns = stride(from: 0, to: script.count - 1, by: 2).map { (UInt16(script[$0]) << 8 | UInt16(script[$0 + 1])) & 0x3FFF }
    let report = LocalResponses.reportLUNs(luns)
    precondition(report.count == 8 + 8 * luns.count)
    let listLength = Int(report[0]) << 24 | Int(report[1]) << 16 | Int(report[2]) << 8 | Int(report[3])
    precondition(listLength == 8 * luns.count)
    for (i, lun) in luns.enumerated() {
        var field = [UInt8](repeating: 0, count: 8)
        field[0] = 1
        field[2] = report[8 + 8 * i]
        field[3] = report[8 + 8 * i + 1]
        let decoded = field.withUnsafeBytes { VirtioSCSIAddress(lunField: $0) }
        precondition(decoded?.lun == lun, "REPORT LUNS entry \(i) does not decode to LUN \(lun)")
    }
    let inquiry = LocalResponses.inquiryForUnsupportedLUN(evpd: script.first.map { $0 & 1 != 0 } ?? false,
                                                          pageCode: script.last ?? 0)
    precondition(inquiry[0] == 0x7F, "an unsupported LUN's peripheral qualifier is 011b, type 1Fh")
    // The response encoder: sense clamped to the sense buffer, fields where the spec puts them.
    let sense = [UInt8](repeating: 0xAB, count: script.count * 3 / 2)
    var response = [UInt8](repeating: 0xEE, count: VirtioSCSICommandResponse.byteCount)
    let residual = UInt32(script.count) &* 0x0101_0101
    let code = VirtioSCSIResponse(rawValue: (script.first ?? 0) % 13) ?? .ok
    sense.withUnsafeBytes { s in
        response.withUnsafeMutableBytes { r in
            VirtioSCSICommandResponse.encode(response: code, status: script.last ?? 0, residual: residual, sense: s, into: r)
        }
    }
    let senseLength = Int(response[0]) | Int(response[1]) << 8 | Int(response[2]) << 16 | Int(response[3]) << 24
    precondition(senseLength == min(sense.count, VirtioSCSIConfig.senseSize), "sense_len \(senseLength)")
    precondition(response[11] == code.rawValue && response[10] == (script.last ?? 0))
    precondition(response[12..<(12 + senseLength)].allSatisfy { $0 == 0xAB })
    precondition(response[(12 + senseLength)...].allSatisfy { $0 == 0 }, "sense buffer not zero-filled")
}
#else
public func fuzzSCSIRequest(_ data: [UInt8]) {
    preconditionFailure("FuzzTargets must be built in debug (it uses @testable imports)")
}
#endif
