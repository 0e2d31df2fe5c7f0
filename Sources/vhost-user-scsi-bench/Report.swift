import Glibc

/// What a run measured, as text for people or JSON for scripts.
struct Report {
    let options: BenchOptions
    let indirect: Bool
    let eventIndex: Bool
    let blockCount: UInt64
    let logicalBlock: Int
    let rangeBytes: UInt64
    var workload: Run.PhaseResult? = nil
    var verifyWrites: UInt64 = 0
    var verifyReads: UInt64 = 0
    var verified = false
    var failure: String? = nil

    var failed: Bool { failure != nil }

    var iops: Double {
        guard let w = workload, w.seconds > 0 else { return 0 }
        return Double(w.completed) / w.seconds
    }
    var bandwidth: Double { iops * Double(options.blockSize) }

    func perIO(_ seconds: Double?) -> Double? {
        guard let seconds, let w = workload, w.completed > 0 else { return nil }
        return seconds / Double(w.completed) * 1e6
    }

    static func micro(_ ns: UInt64) -> String { format(Double(ns) / 1000, 1) }

    static func format(_ value: Double, _ decimals: Int) -> String {
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = buffer.withUnsafeMutableBufferPointer { b in
            b.withMemoryRebound(to: CChar.self) { c in
                withVaList([value]) { vsnprintf(c.baseAddress, 64, "%.\(decimals)f", $0) }
            }
        }
        return String(decoding: buffer[0..<Int(max(0, min(n, 63)))], as: UTF8.self)
    }

    func text() -> String {
        let o = options
        var lines: [String] = []
        lines.append("\(o.rw.rawValue) bs=\(o.blockSize) iodepth=\(o.iodepth) queues=\(o.queues)"
                     + (o.rw.fixedReadPercent == nil ? " rwmixread=\(o.rwmixread)" : "")
                     + " LUN \(o.target):\(o.lun) (\(blockCount) × \(logicalBlock) B, range \(rangeBytes) B)"
                     + " ring: \(indirect ? "indirect" : "direct") descriptors, \(eventIndex ? "EVENT_IDX" : "no EVENT_IDX")")
        if let w = workload {
            let h = w.histogram
            lines.append("  IOPS \(Self.format(iops, 0))  bandwidth \(Self.format(bandwidth / 1048576, 1)) MiB/s"
                         + "  (\(w.completed) I/Os in \(Self.format(w.seconds, 2)) s: \(w.reads) reads, \(w.writes) writes, \(w.errors) errors)")
            lines.append("  latency µs: min \(Self.micro(h.total > 0 ? h.minimum : 0))  mean \(Self.format(h.mean / 1000, 1))"
                         + "  p50 \(Self.micro(h.value(atPercentile: 50)))  p90 \(Self.micro(h.value(atPercentile: 90)))"
                         + "  p99 \(Self.micro(h.value(atPercentile: 99)))  p99.9 \(Self.micro(h.value(atPercentile: 99.9)))"
                         + "  max \(Self.micro(h.maximum))")
            var cpu = "  CPU per I/O:"
            if let b = perIO(w.backendCPU) { cpu += " backend \(Self.format(b, 2)) µs (pid \(o.backendPID!)),"}
            cpu += " bench \(Self.format(perIO(w.ownCPU) ?? 0, 2)) µs"
            lines.append(cpu)
        }
        if o.verify {
            lines.append("  verify: \(verified ? "ok" : "FAILED") (\(verifyWrites) pattern writes, \(verifyReads) read back"
                         + ", every workload read checked)")
        }
        if let failure { lines.append("  error: \(failure)") }
        return lines.joined(separator: "\n")
    }

    func json() -> String {
        let o = options
        var fields: [String] = []
        func add(_ key: String, _ value: String) { fields.append("\"\(key)\": \(value)") }
        func string(_ s: String) -> String {
            var out = "\""
            for c in s.unicodeScalars {
                switch c {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                default:
                    if c.value < 0x20 { out += "\\u" + String(repeating: "0", count: 4 - String(c.value, radix: 16).count) + String(c.value, radix: 16) } else { out.unicodeScalars.append(c) }
                }
            }
            return out + "\""
        }
        add("rw", string(o.rw.rawValue))
        add("bs", "\(o.blockSize)")
        add("iodepth", "\(o.iodepth)")
        add("queues", "\(o.queues)")
        if o.rw.fixedReadPercent == nil { add("rwmixread", "\(o.rwmixread)") }
        add("lun", string("\(o.target):\(o.lun)"))
        add("block_count", "\(blockCount)")
        add("logical_block", "\(logicalBlock)")
        add("range_bytes", "\(rangeBytes)")
        add("indirect", indirect ? "true" : "false")
        add("event_idx", eventIndex ? "true" : "false")
        if let w = workload {
            let h = w.histogram
            add("runtime_s", Self.format(w.seconds, 3))
            add("ios", "\(w.completed)")
            add("reads", "\(w.reads)")
            add("writes", "\(w.writes)")
            add("errors", "\(w.errors)")
            add("iops", Self.format(iops, 1))
            add("bw_bytes", Self.format(bandwidth, 0))
            add("lat_ns", "{\"min\": \(h.total > 0 ? h.minimum : 0), \"mean\": \(Self.format(h.mean, 0)), "
                + "\"p50\": \(h.value(atPercentile: 50)), \"p90\": \(h.value(atPercentile: 90)), "
                + "\"p99\": \(h.value(atPercentile: 99)), \"p99.9\": \(h.value(atPercentile: 99.9)), \"max\": \(h.maximum)}")
            if let b = perIO(w.backendCPU) { add("backend_cpu_us_per_io", Self.format(b, 3)) }
            add("bench_cpu_us_per_io", Self.format(perIO(w.ownCPU) ?? 0, 3))
        }
        if o.verify { add("verify", verified ? "\"ok\"" : "\"failed\"") }
        add("error", failure.map(string) ?? "null")
        return "{" + fields.joined(separator: ", ") + "}"
    }
}
