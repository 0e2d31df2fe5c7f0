import CVhostShims
import Glibc
import UnixSockets
import VhostUserProtocol

/// A received message: header, payload and the file descriptors that came with it. The
/// descriptors are owned by the receiver, who must close those it does not keep.
public struct ReceivedMessage {
    public var header: VhostUserHeader
    public var payload: [UInt8]
    public var fds: [Int32]

    public init(header: VhostUserHeader, payload: [UInt8], fds: [Int32]) {
        self.header = header
        self.payload = payload
        self.fds = fds
    }

    public func closeFileDescriptors() { fds.forEach(closeOwned) }
}

/// One connected vhost-user stream: framing and SCM_RIGHTS. Blocking I/O, used from one queue.
public final class MessageChannel {
    public let fd: Int32

    /// Takes ownership of `fd`.
    public init(fd: Int32) { self.fd = fd }

    deinit { closeOwned(fd) }

    public enum ReceiveError: Error, CustomStringConvertible {
        case closed
        case system(SystemError)
        case protocolViolation(VhostUserProtocolError)
        case truncated(String)

        public var description: String {
            switch self {
            case .closed: return "connection closed"
            case .system(let e): return e.description
            case .protocolViolation(let e): return e.description
            case .truncated(let why): return why
            }
        }
    }

    /// Reads one whole message. The fds arrive with the header's bytes.
    public func receive() throws -> ReceivedMessage {
        var headerBytes = [UInt8](repeating: 0, count: VhostUserHeader.byteCount)
        var fds: [Int32] = []
        let controlSpace = CVhostShims_CMSG_SPACE(MemoryLayout<Int32>.size * VhostUserHeader.maxFileDescriptors)
        let control = UnsafeMutableRawPointer.allocate(byteCount: controlSpace, alignment: 8)
        defer { control.deallocate() }
        var received = 0
        var truncatedControl = false
        try headerBytes.withUnsafeMutableBytes { (buffer) throws in
            var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
            var msg = msghdr()
            let n: Int = withUnsafeMutablePointer(to: &iov) { iovPointer in
                msg.msg_iov = iovPointer
                msg.msg_iovlen = 1
                msg.msg_control = control
                msg.msg_controllen = controlSpace
                while true {
                    let r = recvmsg(fd, &msg, Int32(MSG_CMSG_CLOEXEC))
                    if r < 0 && errno == EINTR { continue }
                    return r
                }
            }
            if n < 0 { throw ReceiveError.system(SystemError(errno: errno, "recvmsg")) }
            if n == 0 { throw ReceiveError.closed }
            received = n
            truncatedControl = msg.msg_flags & Int32(MSG_CTRUNC) != 0
            // SAFETY: the kernel filled `control` up to msg_controllen; CMSG_* walk within it.
            var cmsg = CVhostShims_CMSG_FIRSTHDR(&msg)
            while let header = cmsg {
                if header.pointee.cmsg_level == SOL_SOCKET && header.pointee.cmsg_type == Int32(SCM_RIGHTS) {
                    let dataBytes = Int(header.pointee.cmsg_len) - Int(CVhostShims_CMSG_LEN(0))
                    let data = UnsafeRawPointer(CVhostShims_CMSG_DATA(header)!)
                    for i in 0..<(dataBytes / MemoryLayout<Int32>.size) {
                        fds.append(data.loadUnaligned(fromByteOffset: i * 4, as: Int32.self))
                    }
                }
                cmsg = CVhostShims_CMSG_NXTHDR(&msg, header)
            }
        }
        if truncatedControl {
            fds.forEach(closeOwned)
            throw ReceiveError.truncated("more than \(VhostUserHeader.maxFileDescriptors) file descriptors in one message")
        }
        do {
            if received < VhostUserHeader.byteCount {
                try readExactly(&headerBytes, from: received)
            }
            let header = headerBytes.withUnsafeBytes { VhostUserHeader($0) }
            if let error = header.validationError { throw ReceiveError.protocolViolation(error) }
            var payload = [UInt8](repeating: 0, count: Int(header.size))
            try readExactly(&payload, from: 0)
            return ReceivedMessage(header: header, payload: payload, fds: fds)
        } catch {
            fds.forEach(closeOwned)
            throw error
        }
    }

    private func readExactly(_ buffer: inout [UInt8], from start: Int) throws {
        var offset = start
        while offset < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ReceiveError.system(SystemError(errno: errno, "read"))
            }
            if n == 0 { throw ReceiveError.truncated("connection closed in the middle of a message") }
            offset += n
        }
    }

    /// Sends a message with optional fds (which stay owned by the caller).
    public func send(request: UInt32, flags: VhostUserHeaderFlags, payload: [UInt8], fds: [Int32] = []) throws(SystemError) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(VhostUserHeader.byteCount + payload.count)
        VhostUserHeader(request: request, flags: flags, size: UInt32(payload.count)).encode(into: &bytes)
        bytes.append(contentsOf: payload)
        let controlSpace = fds.isEmpty ? 0 : CVhostShims_CMSG_SPACE(MemoryLayout<Int32>.size * fds.count)
        let control = UnsafeMutableRawPointer.allocate(byteCount: max(controlSpace, 1), alignment: 8)
        defer { control.deallocate() }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { buffer -> Int in
                var iov = iovec(iov_base: buffer.baseAddress! + offset, iov_len: buffer.count - offset)
                var msg = msghdr()
                return withUnsafeMutablePointer(to: &iov) { iovPointer -> Int in
                    msg.msg_iov = iovPointer
                    msg.msg_iovlen = 1
                    if offset == 0 && !fds.isEmpty {
                        // SAFETY: control has CMSG_SPACE(n * 4) bytes; we fill one header.
                        memset(control, 0, controlSpace)
                        msg.msg_control = control
                        msg.msg_controllen = controlSpace
                        let cmsg = CVhostShims_CMSG_FIRSTHDR(&msg)!
                        cmsg.pointee.cmsg_level = SOL_SOCKET
                        cmsg.pointee.cmsg_type = Int32(SCM_RIGHTS)
                        cmsg.pointee.cmsg_len = CVhostShims_CMSG_LEN(MemoryLayout<Int32>.size * fds.count)
                        let data = UnsafeMutableRawPointer(CVhostShims_CMSG_DATA(cmsg)!)
                        for (i, fd) in fds.enumerated() {
                            data.storeBytes(of: fd, toByteOffset: i * 4, as: Int32.self)
                        }
                    }
                    return sendmsg(fd, &msg, Int32(MSG_NOSIGNAL))
                }
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError(errno: errno, "sendmsg")
            }
            offset += n
        }
    }
}
