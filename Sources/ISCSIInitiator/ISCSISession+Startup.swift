internal import CLibISCSI
import ServerLog

/// Synchronous commands for startup: what the server logs about the LUN it attached to, and
/// an early failure when the URL names the wrong LUN. They block the calling thread until the
/// target answers; called from elsewhere they run on the session's queue (queue.sync), so they
/// must not be called from a block that the queue is waiting on.
extension ISCSISession {
    /// READ CAPACITY (16) of the URL's LUN: the number of logical blocks and their size.
    public func readCapacity() throws(ISCSIError) -> (blocks: UInt64, blockSize: UInt32) {
        try onQueue { () -> Result<(blocks: UInt64, blockSize: UInt32), ISCSIError> in
            runSync("READ CAPACITY(16)", { ctx in iscsi_readcapacity16_sync(ctx, Int32(url.lun)) }) { task in
                // SAFETY: scsi_datain_unmarshall returns a scsi_readcapacity16 for this CDB,
                // owned by the task, which outlives this closure.
                guard let data = scsi_datain_unmarshall(task) else { return nil }
                let capacity = data.assumingMemoryBound(to: scsi_readcapacity16.self).pointee
                return (capacity.returned_lba &+ 1, capacity.block_length)
            }
        }.get()
    }

    /// Standard INQUIRY of the URL's LUN. Throws when no logical unit is there (peripheral
    /// qualifier not 0), so a wrong LUN in the URL fails at startup.
    public func inquiry() throws(ISCSIError) -> (vendor: String, product: String, peripheralType: UInt8) {
        let result = try onQueue { () -> Result<(qualifier: UInt32, vendor: String, product: String, type: UInt8), ISCSIError> in
            runSync("INQUIRY", { ctx in iscsi_inquiry_sync(ctx, Int32(url.lun), 0, 0, 255) }) { task in
                // SAFETY: scsi_datain_unmarshall returns a scsi_inquiry_standard for a standard
                // INQUIRY, owned by the task, which outlives this closure.
                guard let data = scsi_datain_unmarshall(task) else { return nil }
                var inquiry = data.assumingMemoryBound(to: scsi_inquiry_standard.self).pointee
                let vendor = withUnsafeBytes(of: &inquiry.vendor_identification) { Self.trimmedASCII($0) }
                let product = withUnsafeBytes(of: &inquiry.product_identification) { Self.trimmedASCII($0) }
                return (inquiry.qualifier.rawValue, vendor, product, UInt8(truncatingIfNeeded: inquiry.device_type.rawValue))
            }
        }.get()
        guard result.qualifier == 0 else {
            throw ISCSIError(.command, "no logical unit at \(url) (INQUIRY peripheral qualifier \(result.qualifier))")
        }
        return (result.vendor, result.product, result.type)
    }

    /// Runs a libiscsi `_sync` command and parses its task; one-line errors name the URL.
    private func runSync<T>(_ name: String,
                            _ call: (OpaquePointer) -> UnsafeMutablePointer<scsi_task>?,
                            parse: (UnsafeMutablePointer<scsi_task>) -> T?) -> Result<T, ISCSIError> {
        guard let ctx = context, !closed else {
            return .failure(ISCSIError(.closed, "\(name) on \(url): the session is closed"))
        }
        guard linkUp else {
            return .failure(ISCSIError(.command, "\(name) on \(url) failed: the target is unreachable"))
        }
        let task = withLibiscsi { call(ctx) }
        // The sync call ran libiscsi's own event loop: the socket may have changed.
        followSocket()
        guard let task else {
            return .failure(ISCSIError(.command, "\(name) on \(url) failed: \(context.map(lastError) ?? "session closed")"))
        }
        defer { scsi_free_scsi_task(task) }
        guard task.pointee.status == LibISCSIStatus.good else {
            let reason = context.map(lastError) ?? "status \(task.pointee.status)"
            return .failure(ISCSIError(.command, "\(name) on \(url) failed: \(reason)"))
        }
        guard let value = parse(task) else {
            return .failure(ISCSIError(.command, "\(name) on \(url) returned data that cannot be parsed"))
        }
        return .success(value)
    }

    /// A space-padded, NUL-terminated ASCII field of INQUIRY data.
    static func trimmedASCII(_ bytes: UnsafeRawBufferPointer) -> String {
        let field = bytes.prefix { $0 != 0 }
        let text = String(decoding: field, as: UTF8.self)
        var end = text.endIndex
        while end > text.startIndex, text[text.index(before: end)] == " " { end = text.index(before: end) }
        return String(text[..<end])
    }
}
