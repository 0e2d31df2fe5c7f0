import Glibc

/// Initiator names: the per-host default and the validity check.
extension ISCSILoginSettings {
    /// The naming authority of the default names.
    public static let defaultInitiatorNamePrefix = "iqn.2026-11.org.vhost-user-scsi"

    /// `iqn.2026-11.org.vhost-user-scsi:HOSTNAME-XXXXXXXX`, unique per host: HOSTNAME is the
    /// host name cleaned to an iSCSI name's characters, XXXXXXXX 8 hex digits of an HMAC-SHA-256
    /// keyed with /etc/machine-id (machine-id(5): the ID itself is not to be exposed), so two
    /// hosts with one host name (clones, containers) still differ. Without a machine ID, the
    /// host name alone. Computed once per process.
    public static func defaultInitiatorName() -> String { cachedDefaultName }

    private static let cachedDefaultName = defaultInitiatorName(hostname: currentHostname(), machineID: currentMachineID())

    /// The default name for a host name and a machine ID (32 hex digits; anything else counts
    /// as none). Always passes `validateInitiatorName`.
    static func defaultInitiatorName(hostname: String?, machineID: String?) -> String {
        var host = String((hostname ?? "").lowercased().unicodeScalars.map { scalar -> Character in
            switch scalar {
            case "a"..."z", "0"..."9", "-", ".": return Character(scalar)
            default: return "-"
            }
        })
        while let first = host.first, first == "-" || first == "." { host.removeFirst() }
        while let last = host.last, last == "-" || last == "." { host.removeLast() }
        if host.isEmpty { host = "localhost" }
        var suffix = ""
        if let key = machineIDBytes(machineID) {
            let digest = SHA256.hmac(key: key, message: Array("org.vhost-user-scsi.initiator-name".utf8))
            suffix = "-" + digest.prefix(4).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        }
        // RFC 7143 §4.2.7: at most 223 bytes.
        let room = maximumNameBytes - defaultInitiatorNamePrefix.utf8.count - 1 - suffix.utf8.count
        if host.utf8.count > room { host = String(host.prefix(room)) }
        return defaultInitiatorNamePrefix + ":" + host + suffix
    }

    /// RFC 7143 §4.2.7: iSCSI names are at most 223 bytes.
    static let maximumNameBytes = 223

    /// Checks that `name` is an iSCSI name a target will accept (RFC 7143 §4.2.7): at most 223
    /// bytes, and `iqn.YYYY-MM.reversed.domain[:anything]` in lowercase letters, digits, '-',
    /// '.' and ':', or `eui.` with 16 hex digits, or `naa.` with 16 or 32 hex digits. Throws
    /// a one-line error that names the rule broken.
    public static func validateInitiatorName(_ name: String) throws(ISCSIError) {
        func fail(_ why: String) -> ISCSIError {
            ISCSIError(.configuration, "initiator name '\(name)' is not a valid iSCSI name: \(why)")
        }
        if name.isEmpty { throw ISCSIError(.configuration, "the initiator name is empty") }
        if name.utf8.count > maximumNameBytes { throw fail("longer than \(maximumNameBytes) bytes") }
        let scalars = Array(name.unicodeScalars)
        func isHex(_ s: Unicode.Scalar) -> Bool { ("0"..."9").contains(s) || ("a"..."f").contains(s) || ("A"..."F").contains(s) }
        if name.hasPrefix("iqn.") {
            // iqn.YYYY-MM.
            let date = scalars.dropFirst(4).prefix(8)
            let shapeOK = date.count == 8 && date.enumerated().allSatisfy { index, s in
                index == 4 ? s == "-" : index == 7 ? s == "." : ("0"..."9").contains(s)
            }
            guard shapeOK, scalars.count > 12 else {
                throw fail("an iqn name is iqn.YYYY-MM.reversed.domain[:identifier]")
            }
            if let bad = scalars.first(where: { !(("a"..."z").contains($0) || ("0"..."9").contains($0) || "-.:".unicodeScalars.contains($0)) }) {
                let hint = ("A"..."Z").contains(bad) ? " (use lowercase)" : ""
                throw fail("character '\(bad)' is not allowed; use lowercase letters, digits, '-', '.' and ':'\(hint)")
            }
        } else if name.hasPrefix("eui.") {
            guard scalars.count == 20, scalars.dropFirst(4).allSatisfy(isHex) else {
                throw fail("an eui name is eui. and 16 hex digits")
            }
        } else if name.hasPrefix("naa.") {
            guard scalars.count == 20 || scalars.count == 36, scalars.dropFirst(4).allSatisfy(isHex) else {
                throw fail("a naa name is naa. and 16 or 32 hex digits")
            }
        } else {
            throw fail("it must start with iqn., eui. or naa.")
        }
    }

    /// 16 bytes from 32 hex digits, or nil.
    private static func machineIDBytes(_ text: String?) -> [UInt8]? {
        guard let text else { return nil }
        let hex = Array(text.utf8)
        guard hex.count == 32 else { return nil }
        var bytes: [UInt8] = []
        for i in stride(from: 0, to: 32, by: 2) {
            guard let byte = UInt8(String(decoding: hex[i..<i + 2], as: UTF8.self), radix: 16) else { return nil }
            bytes.append(byte)
        }
        // systemd writes "uninitialized" or all zeros before the ID exists.
        return bytes.allSatisfy { $0 == 0 } ? nil : bytes
    }

    private static func currentHostname() -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The machine ID (systemd's, else D-Bus's), trimmed; nil when neither file has one.
    private static func currentMachineID() -> String? {
        for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
            guard let file = fopen(path, "r") else { continue }
            defer { fclose(file) }
            var buffer = [CChar](repeating: 0, count: 64)
            guard fgets(&buffer, Int32(buffer.count), file) != nil else { continue }
            let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                .trimmingASCIIWhitespace()
            if machineIDBytes(text) != nil { return text }
        }
        return nil
    }
}

extension String {
    fileprivate func trimmingASCIIWhitespace() -> String {
        let isSpace = { (s: Unicode.Scalar) in s == " " || s == "\n" || s == "\t" || s == "\r" }
        var scalars = Substring(self).unicodeScalars
        while let s = scalars.first, isSpace(s) { scalars.removeFirst() }
        while let s = scalars.last, isSpace(s) { scalars.removeLast() }
        return String(scalars)
    }
}
