import Glibc

/// Reusable iovec storage for one request, handed to the SCSI target while the command is in
/// flight (libiscsi rewrites the entries as it transfers, so it cannot be shared).
///
/// Its fields live behind a pointer held in a `let`, for the reason `ChainSegmentBuffer`
/// gives: no run-time exclusivity check per append. Used by one request on one queue at a time.
public final class IOVecBuffer {
    @usableFromInline struct State {
        @usableFromInline var storage: UnsafeMutablePointer<iovec>
        @usableFromInline var capacity: Int
        @usableFromInline var used = 0
        @usableFromInline init(storage: UnsafeMutablePointer<iovec>, capacity: Int) {
            self.storage = storage
            self.capacity = capacity
        }
    }

    @usableFromInline let state: UnsafeMutablePointer<State>

    public init(capacity: Int = 8) {
        let capacity = max(capacity, 1)
        state = .allocate(capacity: 1)
        state.initialize(to: State(storage: .allocate(capacity: capacity), capacity: capacity))
    }

    deinit {
        state.pointee.storage.deallocate()
        state.deinitialize(count: 1)
        state.deallocate()
    }

    @inlinable
    public var count: Int { state.pointee.used }

    @inlinable
    public func reset() { state.pointee.used = 0 }

    @inlinable
    public func append(base: UnsafeMutableRawPointer, length: Int) {
        if state.pointee.used == state.pointee.capacity { grow() }
        state.pointee.storage[state.pointee.used] = iovec(iov_base: base, iov_len: length)
        state.pointee.used += 1
    }

    @usableFromInline
    func grow() {
        let bigger = UnsafeMutablePointer<iovec>.allocate(capacity: state.pointee.capacity * 2)
        bigger.moveInitialize(from: state.pointee.storage, count: state.pointee.used)
        state.pointee.storage.deallocate()
        state.pointee.storage = bigger
        state.pointee.capacity *= 2
    }

    @inlinable
    public var buffer: UnsafeMutableBufferPointer<iovec> {
        UnsafeMutableBufferPointer(start: state.pointee.storage, count: state.pointee.used)
    }
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
