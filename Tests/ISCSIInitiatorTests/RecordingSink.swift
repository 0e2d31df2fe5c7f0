import Dispatch
import Foundation
import ISCSIInitiator
import SCSICore
import XCTest

/// One completion, with the borrowed sense bytes copied out.
struct RecordedCompletion {
    var token: Int
    var outcome: SCSITransportOutcome
    var status: SCSIStatus
    var sense: [UInt8]
    var residual: Int
}

/// Records completions (called on the session's queue) for a test thread to wait on.
final class RecordingSink: SCSICompletionSink, @unchecked Sendable {
    private let lock = NSCondition()
    private var completions: [RecordedCompletion] = []
    /// Every event in order, completions as "c<token>" and replies as "r".
    private(set) var events: [String] = []

    func scsiCommandCompleted(token: Int, _ completion: SCSICompletion) {
        lock.lock()
        completions.append(RecordedCompletion(token: token, outcome: completion.outcome,
                                              status: completion.status, sense: Array(completion.sense),
                                              residual: completion.residual))
        events.append("c\(token)")
        lock.broadcast()
        lock.unlock()
    }

    func noteEvent(_ event: String) {
        lock.lock()
        events.append(event)
        lock.broadcast()
        lock.unlock()
    }

    var all: [RecordedCompletion] {
        lock.lock()
        defer { lock.unlock() }
        return completions
    }

    var allEvents: [String] {
        lock.lock()
        defer { lock.unlock() }
        return events
    }

    /// Waits (bounded) until `count` completions have arrived in total.
    func wait(for count: Int, timeout: TimeInterval = 10, file: StaticString = #filePath, line: UInt = #line) -> [RecordedCompletion] {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        while completions.count < count {
            if !lock.wait(until: deadline) {
                XCTFail("timed out waiting for \(count) completions, have \(completions.count)", file: file, line: line)
                break
            }
        }
        return completions
    }

    /// The completion of `token`, waiting for it (bounded).
    func completion(of token: Int, timeout: TimeInterval = 10, file: StaticString = #filePath, line: UInt = #line) -> RecordedCompletion? {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        while true {
            if let found = completions.last(where: { $0.token == token }) { return found }
            if !lock.wait(until: deadline) {
                XCTFail("timed out waiting for the completion of token \(token)", file: file, line: line)
                return nil
            }
        }
    }
}

/// A bounded wait for a task-management reply.
final class ReplyBox: @unchecked Sendable {
    private let lock = NSCondition()
    private var value: SCSITaskManagementResponse?

    func set(_ response: SCSITaskManagementResponse) {
        lock.lock()
        value = response
        lock.broadcast()
        lock.unlock()
    }

    func wait(timeout: TimeInterval = 10, file: StaticString = #filePath, line: UInt = #line) -> SCSITaskManagementResponse? {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        while value == nil {
            if !lock.wait(until: deadline) {
                XCTFail("timed out waiting for a task management reply", file: file, line: line)
                return nil
            }
        }
        return value
    }
}

/// Memory for one command: a data area and its iovec array split into pieces, both alive until
/// `free()`, as a guest's buffers would be.
final class IOBuffers: @unchecked Sendable {
    let data: UnsafeMutableRawBufferPointer
    let iovecs: UnsafeMutableBufferPointer<iovec>

    /// `pieces` are the lengths of the iovecs; their sum is the data size.
    init(pieces: [Int]) {
        let total = pieces.reduce(0, +)
        data = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 4096)
        data.initializeMemory(as: UInt8.self, repeating: 0)
        iovecs = UnsafeMutableBufferPointer<iovec>.allocate(capacity: pieces.count)
        var offset = 0
        for (index, length) in pieces.enumerated() {
            iovecs[index] = iovec(iov_base: data.baseAddress! + offset, iov_len: length)
            offset += length
        }
    }

    var count: Int { iovecs.reduce(0) { $0 + $1.iov_len } }

    func free() {
        data.deallocate()
        iovecs.deallocate()
    }
}

/// CDB builders for the commands the tests send.
enum TestCDB {
    static func rw16(_ opcode: UInt8, lba: UInt64, blocks: UInt32) -> [UInt8] {
        var cdb = [UInt8](repeating: 0, count: 16)
        cdb[0] = opcode
        for i in 0..<8 { cdb[2 + i] = UInt8(truncatingIfNeeded: lba >> (56 - 8 * UInt64(i))) }
        for i in 0..<4 { cdb[10 + i] = UInt8(truncatingIfNeeded: blocks >> (24 - 8 * UInt32(i))) }
        return cdb
    }

    static func read16(lba: UInt64, blocks: UInt32) -> [UInt8] { rw16(SCSIOpcode.read16, lba: lba, blocks: blocks) }
    static func write16(lba: UInt64, blocks: UInt32) -> [UInt8] { rw16(SCSIOpcode.write16, lba: lba, blocks: blocks) }
}

/// What the iSCSI test cases that drive a session by hand share: the session's queue and the
/// buffers kept alive until the test ends.
protocol SessionDrivingTestCase: AnyObject {
    var queue: DispatchQueue! { get }
    var buffers: [IOBuffers] { get set }
}

extension SessionDrivingTestCase {
    /// Two-piece buffers of `bytes` bytes, kept until the test ends.
    func makeBuffers(_ bytes: Int) -> IOBuffers {
        let b = IOBuffers(pieces: [bytes / 2, bytes - bytes / 2])
        buffers.append(b)
        return b
    }

    /// Submits `cdb` to LUN 1 on the session's queue and flushes; false when refused.
    @discardableResult
    func submit(_ session: ISCSISession, _ cdb: [UInt8], _ buffers: IOBuffers?,
                _ direction: SCSIDataDirection, token: Int) -> Bool {
        queue.sync {
            cdb.withUnsafeBytes { cdbBytes in
                let iov = buffers?.iovecs ?? UnsafeMutableBufferPointer(start: nil, count: 0)
                let ok = session.submit(SCSICommand(lun: 1, cdb: cdbBytes, direction: direction, buffers: iov,
                                                    transferLength: buffers?.count ?? 0), token: token)
                session.flush()
                return ok
            }
        }
    }
}
