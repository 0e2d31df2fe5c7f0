import SCSICore
import VirtioCore
import VirtioSCSI

/// Preallocated state of one in-flight command; its index is the token the SCSI target
/// session completes it with. Confined to its request queue.
final class RequestSlot {
    let token: Int
    let chain = ChainSegmentBuffer(capacity: 8)
    let iovecs = IOVecBuffer()
    /// The request header, copied out of guest memory once.
    let header = UnsafeMutableRawBufferPointer.allocate(byteCount: VirtioSCSICommandHeader.byteCount, alignment: 8)

    var head: UInt16 = 0
    var id: UInt64 = 0
    var address = VirtioSCSIAddress(target: 0, lun: 0)
    /// The id of the logical unit the command went to (`LogicalUnit.id`); -1 while the slot is free.
    var backend = -1
    /// That unit's LUN at the backend, for aborting the command after the unit is removed.
    var backendLUN: UInt16 = 0
    /// The ring start the request came from (see RequestQueueWorker.generation).
    var generation = 0
    var dataInLength = 0
    /// Keeps the memory the chain was translated with mapped until the command completes.
    var memory: GuestMemory?

    init(token: Int) { self.token = token }

    deinit { header.deallocate() }

    var cdb: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: header[VirtioSCSICommandHeader.cdbOffset...])
    }
}
