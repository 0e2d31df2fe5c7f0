// @testable imports need a debug build (SwiftPM compiles debug modules with testing
// enabled); in a release build the entry points that drive internal product types trap.
#if DEBUG
import SCSICore
@testable import VhostUserSCSI
import VirtioCore
import VirtioSCSI

/// Fuzzes the control queue in memory: task management functions (ABORT TASK ... QUERY
/// TASK SET) and asynchronous notification requests taken from a fuzz-built ring, carried
/// out on the request queues' fake sessions (which may hold commands posted on request
/// queue 2 so that ABORT TASK and the resets find them), and answered into guest memory.
///
/// Input: byte 0 picks the control ring size (bits 0-2: 1 << (n % 5)), the memory layout
/// (bits 3-4), EVENT_IDX (bit 5), whether commands are held until a TMF or the end (bit 6)
/// and whether request queue 2 (an 8-entry ring right after the control ring) runs first
/// (bit 7); bytes 1-2 and 3-4 the next avail indices of the control and request rings;
/// byte 5 a script length L and L script bytes; the rest is guest memory.
///
/// Invariants: both rings drain (every TMF answered, none waits forever), every request
/// taken from either ring is answered once, and the responses of several sessions combine
/// with the worst one winning.
public func fuzzControlQueue(_ data: [UInt8]) {
    FuzzDeviceHarness.shared.run { fuzzControlQueueExclusive(data) }
}

private func fuzzControlQueueExclusive(_ data: [UInt8]) {
    var input = FuzzReader(data)
    let config = input.u8()
    let size = UInt16(1) << UInt16((config & 7) % 5)
    let layout = FuzzGuestMemory.layouts[Int(config >> 3) & 3]
    var features: VirtioFeatures = [.version1, .indirectDescriptors]
    if config & 0x20 != 0 { features.insert(.eventIndex) }
    let hold = config & 0x40 != 0
    let withRequests = config & 0x80 != 0
    let controlAvail = input.u16()
    let requestAvail = input.u16()
    let script = input.bytes(Int(input.u8()))
    checkCombine(script)

    let memory = FuzzGuestMemory(layout: layout, contents: input.rest())
    let control = RingPlacement(size: size, offset: 0)
    let requests = RingPlacement(size: 8, offset: control.end)
    let harness = FuzzDeviceHarness.shared
    harness.environment.begin(memory: memory, script: script, hold: hold)
    defer { harness.environment.end() }

    let requestUsed = initialUsedIndex(requests, memory)
    let requestRing = withRequests
        ? harness.start(vring: 2, placement: requests, memory: memory, nextAvail: requestAvail, features: features) : nil
    let controlUsed = initialUsedIndex(control, memory)
    let controlRing = harness.start(vring: 0, placement: control, memory: memory, nextAvail: controlAvail, features: features)
    harness.quiesce()
    if let (taken, used, broken) = harness.stop(controlRing, usedBefore: controlUsed, availBefore: controlAvail,
                                                    availRing: memory.regions[0].base + control.availOffset) {
        precondition(used == taken || (broken && used < taken), "control queue: \(taken) requests taken, \(used) answered")
    }
    if let requestRing {
        harness.releaseHeld()
        harness.quiesce()
        if let (taken, used, broken) = harness.stop(requestRing, usedBefore: requestUsed, availBefore: requestAvail,
                                                        availRing: memory.regions[0].base + requests.availOffset) {
            precondition(used == taken || (broken && used < taken), "request queue: \(taken) requests taken, \(used) answered")
        }
    }
}

/// The combination of several sessions' TMF answers: failure beats rejection beats
/// incorrect LUN beats success beats completion, whatever the order.
private func checkCombine(_ script: [UInt8]) {
    let all: [SCSITaskManagementResponse] = [.functionComplete, .functionSucceeded, .incorrectLUN, .functionRejected, .failed]
    let responses = script.prefix(8).map { all[Int($0) % all.count] }
    let combined = ControlQueueWorker.combine(responses)
    let rank: [SCSITaskManagementResponse: Int] = [.functionComplete: 0, .functionSucceeded: 1, .incorrectLUN: 2,
                                                    .functionRejected: 3, .failed: 4]
    let expected: VirtioSCSIResponse
    switch responses.max(by: { rank[$0]! < rank[$1]! }) {
    case nil, .functionComplete?: expected = .functionComplete
    case .functionSucceeded?: expected = .functionSucceeded
    case .incorrectLUN?: expected = .incorrectLUN
    case .functionRejected?: expected = .functionRejected
    case .failed?: expected = .failure
    }
    precondition(combined == expected, "combine(\(responses)) = \(combined), expected \(expected)")
    let reversed = ControlQueueWorker.combine(responses.reversed())
    precondition(reversed == combined, "combine depends on the order of the answers")
}
#else
public func fuzzControlQueue(_ data: [UInt8]) {
    preconditionFailure("FuzzTargets must be built in debug (it uses @testable imports)")
}
#endif
