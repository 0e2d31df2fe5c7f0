import Glibc

/// Reusable iovec storage for one request, handed to the SCSI target while the command is in
/// flight (libiscsi rewrites the entries as it transfers, so it cannot be shared).
public final class IOVecBuffer {
    @usableFromInline var storage: UnsafeMutablePointer<iovec>
    @usableFromInline var storageCapacity: Int
    @usableFromInline var used = 0

    public init(capacity: Int = 8) {
        storageCapacity = max(capacity, 1)
        storage = .allocate(capacity: storageCapacity)
    }

    deinit { storage.deallocate() }

    public var count: Int { used }

    @inlinable
    public func reset() { used = 0 }

    @inlinable
    public func append(base: UnsafeMutableRawPointer, length: Int) {
        if used == storageCapacity { grow() }
        storage[used] = iovec(iov_base: base, iov_len: length)
        used += 1
    }

    @usableFromInline
    func grow() {
        let bigger = UnsafeMutablePointer<iovec>.allocate(capacity: storageCapacity * 2)
        bigger.moveInitialize(from: storage, count: used)
        storage.deallocate()
        storage = bigger
        storageCapacity *= 2
    }

    @inlinable
    public var buffer: UnsafeMutableBufferPointer<iovec> { UnsafeMutableBufferPointer(start: storage, count: used) }
}

/// Byte-level access to a validated chain, with the request header and response header
/// allowed to span descriptors (virtio v1.2 §2.7.4: the device must not assume a layout).
extension ChainSegmentBuffer {
    /// Copies the first `count` device-readable bytes to `destination`. False if there are fewer.
    @inlinable
    public func copyReadablePrefix(_ count: Int, to destination: UnsafeMutableRawPointer) -> Bool {
        guard readableBytes >= count else { return false }
        var copied = 0
        var i = 0
        while copied < count {
            let segment = self[i]
            let n = min(segment.length, count - copied)
            (destination + copied).copyMemory(from: segment.base, byteCount: n)
            copied += n
            i += 1
        }
        return true
    }

    /// Writes `source` into the device-writable bytes starting `offset` bytes in. Returns the
    /// number of bytes written (less than `source.count` if the buffers end first).
    @inlinable
    @discardableResult
    public func writeWritable(at offset: Int, from source: UnsafeRawBufferPointer) -> Int {
        var skip = offset
        var written = 0
        var i = readableCount
        while i < count && written < source.count {
            let segment = self[i]
            i += 1
            if skip >= segment.length {
                skip -= segment.length
                continue
            }
            let n = min(segment.length - skip, source.count - written)
            (segment.base + skip).copyMemory(from: source.baseAddress! + written, byteCount: n)
            written += n
            skip = 0
        }
        return written
    }

    /// Appends to `iovecs` the readable (or writable) bytes after the first `skip` of them.
    @inlinable
    public func collect(writable: Bool, skipping skip: Int, into iovecs: IOVecBuffer) {
        var skip = skip
        let range = writable ? readableCount..<count : 0..<readableCount
        for i in range {
            let segment = self[i]
            if skip >= segment.length {
                skip -= segment.length
                continue
            }
            iovecs.append(base: segment.base + skip, length: segment.length - skip)
            skip = 0
        }
    }
}
