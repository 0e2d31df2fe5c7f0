/// Renders controllers' statistics in the Prometheus text exposition format, version 0.0.4
/// (https://prometheus.io/docs/instrumenting/exposition_formats/): per family one `# HELP` and
/// one `# TYPE` line, then its samples. Every metric and label is listed in
/// Docs/OBSERVABILITY.md.
public enum PrometheusText {
    /// The Content-Type of the rendering.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public static let prefix = "vhost_user_scsi_"

    public static func render(_ controllers: [(controller: String, statistics: DeviceStatistics)]) -> String {
        var out = ""
        out.reserveCapacity(4096 + controllers.count * 4096)

        family(&out, "requests_total", .counter, "Requests answered, by kind of SCSI command.")
        eachQueue(controllers) { labels, queue in
            for kind in SCSICommandKind.allCases {
                sample(&out, "requests_total", labels + [("kind", kind.name)], queue.counters.requests(kind))
            }
        }
        family(&out, "read_bytes_total", .counter, "Data-in bytes returned to the guest.")
        eachQueue(controllers) { labels, queue in sample(&out, "read_bytes_total", labels, queue.counters.bytesRead) }
        family(&out, "written_bytes_total", .counter, "Data-out bytes the target took from the guest.")
        eachQueue(controllers) { labels, queue in sample(&out, "written_bytes_total", labels, queue.counters.bytesWritten) }
        family(&out, "request_errors_total", .counter,
               "Requests answered with a virtio response other than OK or a SCSI status other than GOOD, or refused; bus-scan probes of unconfigured addresses excluded.")
        eachQueue(controllers) { labels, queue in sample(&out, "request_errors_total", labels, queue.counters.errors) }
        family(&out, "requests_in_flight", .gauge, "Commands sent to the target and not yet completed.")
        eachQueue(controllers) { labels, queue in sample(&out, "requests_in_flight", labels, UInt64(max(queue.inFlight, 0))) }

        family(&out, "request_duration_seconds", .histogram,
               "Latency of commands sent to the target, from submission to completion.")
        eachQueue(controllers) { labels, queue in
            let histogram = queue.counters.latency
            var cumulative: UInt64 = 0
            for index in 0..<LatencyHistogram.bucketCount {
                cumulative &+= histogram.counts[index]
                let bound = LatencyHistogram.upperBoundNanoseconds(index).map(secondsText) ?? "+Inf"
                sample(&out, "request_duration_seconds_bucket", labels + [("le", bound)], cumulative)
            }
            sample(&out, "request_duration_seconds_sum", labels, secondsText(histogram.sumNanoseconds))
            sample(&out, "request_duration_seconds_count", labels, histogram.count)
        }

        let transport: [(String, String, KeyPath<LUNStatistics, UInt64>)] = [
            ("iscsi_reconnects_total", "Sessions that logged in again after losing their connection.", \.reconnects),
            ("iscsi_connection_losses_total", "Connections to the target lost or declared dead.", \.connectionLosses),
            ("iscsi_command_failures_total", "Commands that ended in a transport failure.", \.commandFailures),
            ("iscsi_login_failures_total", "Failed attempts to make a session for the unit.", \.loginFailures),
        ]
        for (name, help, field) in transport {
            family(&out, name, .counter, help)
            eachQueue(controllers) { labels, queue in
                for unit in queue.luns {
                    sample(&out, name, labels + [("lun", unit.label)], unit[keyPath: field])
                }
            }
        }
        family(&out, "iscsi_sessions", .gauge, "iSCSI sessions of the unit by the state of their connection.")
        eachQueue(controllers) { labels, queue in
            for unit in queue.luns {
                let states: [(String, Int)] = [("up", unit.sessionsUp), ("reconnecting", unit.sessionsReconnecting),
                                               ("failing", unit.sessionsFailing)]
                for (state, count) in states {
                    sample(&out, "iscsi_sessions", labels + [("lun", unit.label), ("state", state)], UInt64(count))
                }
            }
        }
        return out
    }

    // MARK: - Pieces

    enum MetricType: String {
        case counter, gauge, histogram
    }

    typealias Labels = [(String, String)]

    static func eachQueue(_ controllers: [(controller: String, statistics: DeviceStatistics)],
                          _ body: (Labels, QueueStatistics) -> Void) {
        for (controller, statistics) in controllers {
            for queue in statistics.queues {
                body([("controller", controller), ("queue", String(queue.queue))], queue)
            }
        }
    }

    static func family(_ out: inout String, _ name: String, _ type: MetricType, _ help: String) {
        out += "# HELP \(prefix)\(name) \(help)\n# TYPE \(prefix)\(name) \(type.rawValue)\n"
    }

    static func sample(_ out: inout String, _ name: String, _ labels: Labels, _ value: UInt64) {
        sample(&out, name, labels, String(value))
    }

    static func sample(_ out: inout String, _ name: String, _ labels: Labels, _ value: String) {
        out += prefix
        out += name
        out += "{"
        for (index, (label, labelValue)) in labels.enumerated() {
            if index > 0 { out += "," }
            out += label
            out += "=\""
            appendEscapedLabelValue(labelValue, to: &out)
            out += "\""
        }
        out += "} "
        out += value
        out += "\n"
    }

    /// Label values escape `\`, `"` and line feed (exposition format 0.0.4).
    static func appendEscapedLabelValue(_ value: String, to out: inout String) {
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(scalar)
            }
        }
    }

    /// Integer nanoseconds as exact decimal seconds: 16000 → `0.000016`, 2·10⁹ → `2`.
    public static func secondsText(_ nanoseconds: UInt64) -> String {
        let whole = nanoseconds / 1_000_000_000
        var fraction = nanoseconds % 1_000_000_000
        guard fraction > 0 else { return String(whole) }
        var digits = 9
        while fraction % 10 == 0 {
            fraction /= 10
            digits -= 1
        }
        let text = String(fraction)
        return "\(whole)." + String(repeating: "0", count: digits - text.count) + text
    }
}
