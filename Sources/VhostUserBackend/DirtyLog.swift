import CVhostShims
import Glibc
import ServerLog
import VirtioCore

/// The dirty-page log QEMU shares during live migration (SET_LOG_BASE with LOG_SHMFD): one
/// bit per 4 KiB page of guest physical address space, set atomically because QEMU clears
/// bits concurrently (vhost-user spec, "Migration"). A missed bit is guest memory the
/// destination never receives: silent corruption after migration.
///
/// Immutable once made; a new SET_LOG_BASE makes a new one and the old mapping goes when the
/// last ring lets go of it.
public final class DirtyLog: @unchecked Sendable {
    // @unchecked: immutable after init; bitmap bytes are only touched with atomic ORs.
    public static let pageSize: UInt64 = 4096
    private let mapping: UnsafeMutableRawPointer
    private let mappingLength: Int
    private let bitmap: UnsafeMutableRawPointer
    /// Bitmap size in bytes: it covers guest addresses below `size * 8 * 4096`.
    public let size: Int

    /// Maps `size` bytes at `offset` of `fd` (which stays owned by the caller).
    init(fd: Int32, size: UInt64, offset: UInt64) throws(SystemError) {
        let (length, overflow) = size.addingReportingOverflow(offset)
        guard !overflow, size > 0, length <= UInt64(Int.max) else {
            throw SystemError(errno: EINVAL, "log of \(size) bytes at offset \(offset)")
        }
        var st = stat()
        if fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, UInt64(st.st_size) < length {
            throw SystemError(errno: EINVAL, "log ends past the end of its file (\(st.st_size) bytes)")
        }
        let p = mmap(nil, Int(length), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else { throw SystemError(errno: errno, "mmap of the dirty log") }
        mapping = p
        mappingLength = Int(length)
        bitmap = p + Int(offset)
        self.size = Int(size)
    }

    deinit { munmap(mapping, mappingLength) }

    /// Marks every page that `length` bytes at guest physical `address` touch.
    @inline(__always)
    public func mark(guestAddress address: UInt64, length: Int) {
        guard length > 0 else { return }
        let first = address / Self.pageSize
        let (end, overflow) = address.addingReportingOverflow(UInt64(length) - 1)
        let last = (overflow ? UInt64.max : end) / Self.pageSize
        var page = first
        while page <= last {
            let byte = page / 8
            guard byte < UInt64(size) else {
                Log.warning("dirty log of \(size) bytes does not cover guest address 0x\(String(page * Self.pageSize, radix: 16))")
                return
            }
            CVhostShims_atomic_or_u8(bitmap + Int(byte), UInt8(1) << UInt8(page % 8))
            page += 1
        }
    }
}
