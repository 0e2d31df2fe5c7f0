import Glibc

/// A command line mistake: one line on stderr, exit code 2.
struct UsageError: Error, CustomStringConvertible {
    var description: String
}

/// What to do to the request queues.
enum ReadWrite: String, CaseIterable {
    case randread, randwrite, read, write, randrw, rw

    var random: Bool { self == .randread || self == .randwrite || self == .randrw }
    /// Percentage of reads when `rwmixread` does not apply.
    var fixedReadPercent: Int? {
        switch self {
        case .randread, .read: return 100
        case .randwrite, .write: return 0
        case .randrw, .rw: return nil
        }
    }
}

struct BenchOptions {
    var socket = ""
    var target: UInt8 = 0
    var lun: UInt16 = 0
    var queues = 1
    var iodepth = 32
    var blockSize = 4096
    var rw = ReadWrite.randread
    var rwmixread = 70
    var runtime = 10.0
    var ramp = 1.0
    var size: UInt64? = nil
    var verify = false
    var backendPID: Int32? = nil
    var json = false
    var ringSize: Int? = nil
    var useIndirect = true
    var useEventIndex = true
    var timeout = 10.0
    var quiet = false

    static let usage = """
    Usage: vhost-user-scsi-bench --socket PATH [options]

    Plays VMM and guest driver against a vhost-user-scsi backend: negotiates like QEMU,
    shares memfd "guest" RAM, and keeps READ(16)/WRITE(16) in flight on the request queues
    (vrings 2..), one thread per queue. Prints IOPS, bandwidth, latency percentiles and,
    with --backend-pid, the backend's CPU time per I/O.

      --socket PATH         the backend's vhost-user socket (required)
      --lun T:L             virtio-scsi target and LUN (default 0:0)
      --queues N            request queues, one thread each (default 1)
      --iodepth N           requests in flight per queue (default 32)
      --bs SIZE             bytes per request, a multiple of the LUN's block size (default 4k)
      --rw MODE             randread|randwrite|read|write|randrw|rw (default randread)
      --rwmixread PCT       reads in percent for randrw/rw (default 70)
      --runtime SECONDS     measured time (default 10)
      --ramp SECONDS        unmeasured warm-up before it (default 1)
      --size BYTES          LBA range used, from LBA 0 (default: the LUN's capacity)
      --verify              write a stamped pattern (LBA, generation) over the range first,
                            check every read against it, read everything back at the end;
                            exit 1 on a mismatch. Writes go to the LUN: use a scratch LUN.
      --backend-pid PID     report the backend's CPU time per I/O (from /proc/PID/stat)
      --json                one JSON object on stdout instead of text
      --ring-size N         entries per request ring, a power of two (default: 128 or
                            what the depth needs)
      --no-indirect         do not use indirect descriptors even if offered
      --no-event-idx        do not negotiate VIRTIO_F_EVENT_IDX even if offered
      --timeout SECONDS     fail when no request completes for this long (default 10)
      -q, --quiet           no progress lines on stderr
      -h, --help            this text

    SIZE and BYTES take a k, m, g suffix (powers of 1024). Exit codes: 0 done, 1 the backend
    failed (connection, protocol, SCSI error, verify mismatch), 2 bad usage.
    """

    static func parseSize(_ text: String) -> UInt64? {
        var digits = Substring(text.lowercased())
        var scale: UInt64 = 1
        if digits.hasSuffix("ib") { digits = digits.dropLast(2) } else if digits.hasSuffix("b") { digits = digits.dropLast() }
        switch digits.last {
        case "k": scale = 1 << 10; digits = digits.dropLast()
        case "m": scale = 1 << 20; digits = digits.dropLast()
        case "g": scale = 1 << 30; digits = digits.dropLast()
        case "t": scale = 1 << 40; digits = digits.dropLast()
        default: break
        }
        guard let value = UInt64(digits), value <= UInt64.max / scale else { return nil }
        return value * scale
    }

    /// Parses the arguments after the program name; `nil` means --help was asked for.
    static func parse(_ given: [String]) throws(UsageError) -> BenchOptions? {
        var o = BenchOptions()
        // --name=value is accepted as well as --name value.
        let arguments = given.flatMap { a -> [String] in
            guard a.hasPrefix("--"), let eq = a.firstIndex(of: "=") else { return [a] }
            return [String(a[..<eq]), String(a[a.index(after: eq)...])]
        }
        var i = 0
        func value(_ name: String) throws(UsageError) -> String {
            i += 1
            guard i < arguments.count else { throw UsageError(description: "\(name) needs a value") }
            return arguments[i]
        }
        func int(_ name: String, _ range: ClosedRange<Int>) throws(UsageError) -> Int {
            let text = try value(name)
            guard let n = Int(text), range.contains(n) else {
                throw UsageError(description: "\(name) must be a number from \(range.lowerBound) to \(range.upperBound), not '\(text)'")
            }
            return n
        }
        func seconds(_ name: String, allowZero: Bool) throws(UsageError) -> Double {
            let text = try value(name)
            guard let s = Double(text), s.isFinite, allowZero ? s >= 0 : s > 0, s < 1e6 else {
                throw UsageError(description: "\(name) must be a number of seconds\(allowZero ? "" : " above 0"), not '\(text)'")
            }
            return s
        }
        while i < arguments.count {
            let argument = arguments[i]
            switch argument {
            case "-h", "--help": return nil
            case "--socket": o.socket = try value(argument)
            case "--lun":
                let text = try value(argument)
                let parts = text.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count == 2, let t = UInt8(parts[0]), let l = UInt16(parts[1]), l < 16384 else {
                    throw UsageError(description: "--lun must be TARGET:LUN (0-255:0-16383), not '\(text)'")
                }
                o.target = t
                o.lun = l
            case "--queues": o.queues = try int(argument, 1...64)
            case "--iodepth": o.iodepth = try int(argument, 1...1024)
            case "--bs":
                let text = try value(argument)
                guard let n = parseSize(text), n >= 512, n <= 16 << 20, n % 512 == 0 else {
                    throw UsageError(description: "--bs must be a multiple of 512 from 512 to 16m, not '\(text)'")
                }
                o.blockSize = Int(n)
            case "--rw", "--readwrite":
                let text = try value(argument)
                guard let mode = ReadWrite(rawValue: text) else {
                    throw UsageError(description: "--rw must be one of \(ReadWrite.allCases.map(\.rawValue).joined(separator: "|")), not '\(text)'")
                }
                o.rw = mode
            case "--rwmixread": o.rwmixread = try int(argument, 0...100)
            case "--runtime": o.runtime = try seconds(argument, allowZero: false)
            case "--ramp", "--ramp_time": o.ramp = try seconds(argument, allowZero: true)
            case "--size":
                let text = try value(argument)
                guard let n = parseSize(text), n > 0 else { throw UsageError(description: "--size must be a byte count like 1g, not '\(text)'") }
                o.size = n
            case "--verify": o.verify = true
            case "--backend-pid":
                let text = try value(argument)
                guard let pid = Int32(text), pid > 0 else { throw UsageError(description: "--backend-pid must be a process id, not '\(text)'") }
                o.backendPID = pid
            case "--json": o.json = true
            case "--ring-size":
                let n = try int(argument, 2...32768)
                guard n & (n - 1) == 0 else { throw UsageError(description: "--ring-size must be a power of two, not \(n)") }
                o.ringSize = n
            case "--no-indirect": o.useIndirect = false
            case "--no-event-idx": o.useEventIndex = false
            case "--timeout": o.timeout = try seconds(argument, allowZero: false)
            case "-q", "--quiet": o.quiet = true
            default:
                throw UsageError(description: argument.hasPrefix("-") ? "unknown option \(argument) (see --help)"
                                                                       : "unexpected argument '\(argument)' (see --help)")
            }
            i += 1
        }
        guard !o.socket.isEmpty else { throw UsageError(description: "--socket PATH is required (see --help)") }
        if let size = o.size, size < UInt64(o.blockSize) {
            throw UsageError(description: "--size (\(size)) is smaller than --bs (\(o.blockSize))")
        }
        return o
    }
}
