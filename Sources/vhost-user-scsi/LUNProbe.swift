import Dispatch
import EventPoller
import ISCSIInitiator
import VirtioSCSI

/// What a short login finds at a LUN's URL: that it is a disk, and its size. Run before a
/// LUN is served, so a wrong URL fails clearly at once instead of as guest I/O errors.
struct LUNProbe {
    var vendor: String
    var product: String
    var blocks: UInt64
    var blockSize: UInt32

    var bytes: UInt64 { blocks * UInt64(blockSize) }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static func run(_ url: ISCSIURL, login: LoginSettings) throws -> LUNProbe {
        let queue = DispatchQueue(label: "probe")
        return try queue.sync {
            // A synchronous login: an unreachable target or a refused login is an error here.
            // Its login and logout lines at debug: the caller logs one line with what it found.
            let session = try ISCSISession(url: url, login: login.iscsi, queue: queue, maxOutstanding: 1,
                                           recovery: login.recovery, lifecycleLogLevel: .debug)
            defer { session.close() }
            let inquiry = try session.inquiry()
            guard inquiry.peripheralType & 0xE0 == 0 else {
                throw Failure(description: "\(url): no logical unit at LUN \(url.lun) (peripheral qualifier \(inquiry.peripheralType >> 5))")
            }
            let capacity: (blocks: UInt64, blockSize: UInt32)
            do {
                capacity = try session.readCapacity()
            } catch where inquiry.peripheralType & 0x1F != 0 {
                throw Failure(description: "\(url): LUN \(url.lun) is not a disk (peripheral type "
                              + "0x\(String(inquiry.peripheralType & 0x1F, radix: 16)), \(inquiry.vendor) \(inquiry.product)); "
                              + "on tgt, LUN 0 is the controller and disks start at 1")
            }
            return LUNProbe(vendor: inquiry.vendor, product: inquiry.product, blocks: capacity.blocks, blockSize: capacity.blockSize)
        }
    }
}

/// How every session of this process logs in: initiator name, CHAP, digests, outage policy.
struct LoginSettings: Sendable {
    var iscsi: ISCSILoginSettings
    var recovery: ISCSIRecoveryPolicy

    /// A request queue's session. It returns at once and logs in in the background, so a
    /// target that is down when the rings start does not stall the queue's other LUNs; its
    /// commands are held meanwhile, as during an outage. The socket is watched by the queue's
    /// poller thread (VirtioSCSIDevice attaches one).
    func makeSession(url: ISCSIURL, queue: DispatchQueue, maxOutstanding: Int) throws -> ISCSISession {
        try ISCSISession.loggingInInBackground(url: url, login: iscsi, queue: queue, maxOutstanding: maxOutstanding,
                                               recovery: recovery, poller: FDPoller.attached(to: queue))
    }
}
