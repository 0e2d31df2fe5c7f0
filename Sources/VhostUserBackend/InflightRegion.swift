import CVhostShims
import Glibc

/// The shared inflight-tracking region (INFLIGHT_SHMFD; vhost-user spec, "Inflight I/O
/// tracking", split virtqueue layout). It outlives this process: QEMU keeps the memfd and
/// hands it to the next server after a crash or restart, which resubmits what was in flight.
///
/// Per queue: `features u64, version u16, desc_num u16, last_batch_head u16, used_idx u16`,
/// then `desc_num` entries of `inflight u8, padding[5], next u16, counter u64`.
final class InflightRegion: @unchecked Sendable {
    // @unchecked: immutable; each queue's part is touched only from that ring's queue.
    static let version: UInt16 = 1
    static let headerBytes = 16
    static let descriptorStateBytes = 16

    let mapping: UnsafeMutableRawPointer
    let length: Int
    let queueCount: Int
    let queueSize: UInt16

    /// Bytes of one queue's part, padded to 64 so every queue starts on a cache line.
    static func queueRegionBytes(queueSize: UInt16) -> Int {
        (headerBytes + descriptorStateBytes * Int(queueSize) + 63) & ~63
    }

    /// Maps an existing region (SET_INFLIGHT_FD); `fd` stays owned by the caller.
    init(fd: Int32, size: UInt64, offset: UInt64, queueCount: Int, queueSize: UInt16) throws(SystemError) {
        let needed = UInt64(Self.queueRegionBytes(queueSize: queueSize) * queueCount)
        guard queueCount > 0, queueSize > 0, size >= needed, size <= UInt64(Int32.max),
              !offset.addingReportingOverflow(size).overflow else {
            throw SystemError(errno: EINVAL, "inflight region of \(size) bytes for \(queueCount) queues of \(queueSize)")
        }
        var st = stat()
        if fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, UInt64(st.st_size) < offset + size {
            throw SystemError(errno: EINVAL, "inflight region ends past the end of its file")
        }
        let p = mmap(nil, Int(offset + size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else { throw SystemError(errno: errno, "mmap of the inflight region") }
        mapping = p
        length = Int(offset + size)
        self.queueCount = queueCount
        self.queueSize = queueSize
        base = p + Int(offset)
    }

    private let base: UnsafeMutableRawPointer

    deinit { munmap(mapping, length) }

    /// Makes a fresh, zeroed region in a new memfd (GET_INFLIGHT_FD). Returns the fd (owned by
    /// the caller) and its size.
    static func create(queueCount: Int, queueSize: UInt16) throws(SystemError) -> (fd: Int32, size: UInt64) {
        let size = queueRegionBytes(queueSize: queueSize) * queueCount
        let fd = "vhost-user-scsi-inflight".withCString { CVhostShims_memfd_create($0, 1 /* MFD_CLOEXEC */) }
        guard fd >= 0 else { throw SystemError(errno: errno, "memfd_create") }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let err = errno
            close(fd)
            throw SystemError(errno: err, "ftruncate of the inflight region")
        }
        return (fd, UInt64(size))
    }

    func queue(_ index: Int) -> UnsafeInflightQueue {
        UnsafeInflightQueue(base: base + Self.queueRegionBytes(queueSize: queueSize) * index, owner: self)
    }
}

/// One queue's part of the inflight region. Confined to that ring's queue.
struct UnsafeInflightQueue {
    let base: UnsafeMutableRawPointer
    /// Keeps the mapping alive.
    let owner: InflightRegion

    private var version: UInt16 {
        get { base.load(fromByteOffset: 8, as: UInt16.self) }
        nonmutating set { base.storeBytes(of: newValue, toByteOffset: 8, as: UInt16.self) }
    }
    var descriptorCount: UInt16 {
        get { base.load(fromByteOffset: 10, as: UInt16.self) }
        nonmutating set { base.storeBytes(of: newValue, toByteOffset: 10, as: UInt16.self) }
    }
    private var lastBatchHead: UInt16 {
        get { base.load(fromByteOffset: 12, as: UInt16.self) }
        nonmutating set { base.storeBytes(of: newValue, toByteOffset: 12, as: UInt16.self) }
    }
    private var usedIndex: UInt16 {
        get { base.load(fromByteOffset: 14, as: UInt16.self) }
        nonmutating set { base.storeBytes(of: newValue, toByteOffset: 14, as: UInt16.self) }
    }

    private func entry(_ head: UInt16) -> UnsafeMutableRawPointer {
        base + InflightRegion.headerBytes + InflightRegion.descriptorStateBytes * Int(head)
    }
    private func isInflight(_ head: UInt16) -> Bool { entry(head).load(as: UInt8.self) != 0 }
    private func counter(_ head: UInt16) -> UInt64 { entry(head).load(fromByteOffset: 8, as: UInt64.self) }

    /// What a starting ring must do: the avail index to continue from and the heads to
    /// resubmit first, oldest first. A fresh region is initialised and asks for nothing.
    func recover(guestUsedIndex: UInt16, size: UInt16) -> (nextAvail: UInt16, resubmit: [UInt16], nextCounter: UInt64)? {
        guard version != 0 else {
            descriptorCount = size
            version = InflightRegion.version
            return nil
        }
        guard descriptorCount == size else { return nil }
        // Killed between publishing the used index and clearing the entry: that entry is done.
        if usedIndex != guestUsedIndex {
            if lastBatchHead < size { entry(lastBatchHead).storeBytes(of: UInt8(0), as: UInt8.self) }
            CVhostShims_fence_release()
            usedIndex = guestUsedIndex
        }
        var heads: [(head: UInt16, counter: UInt64)] = []
        for head in 0..<size where isInflight(head) {
            heads.append((head, counter(head)))
        }
        heads.sort { $0.counter < $1.counter }
        // Every request taken from the ring is either used or still in flight.
        let nextAvail = guestUsedIndex &+ UInt16(truncatingIfNeeded: heads.count)
        return (nextAvail, heads.map(\.head), (heads.last?.counter ?? 0) &+ 1)
    }

    /// A request was taken from the ring (before it is acted on).
    @inline(__always)
    func taken(_ head: UInt16, counter: UInt64) {
        entry(head).storeBytes(of: counter, toByteOffset: 8, as: UInt64.self)
        CVhostShims_fence_release()
        entry(head).storeBytes(of: UInt8(1), as: UInt8.self)
    }

    /// Before the used element of `head` is published.
    @inline(__always)
    func willPublish(_ head: UInt16) {
        lastBatchHead = head
    }

    /// After the used index `usedIndex` covering `head` was published.
    @inline(__always)
    func published(_ head: UInt16, usedIndex: UInt16) {
        entry(head).storeBytes(of: UInt8(0), as: UInt8.self)
        CVhostShims_fence_release()
        self.usedIndex = usedIndex
    }
}
