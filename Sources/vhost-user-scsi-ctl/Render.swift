import ControlProtocol
import FoundationEssentials

/// Human-readable output of the client; `--json` prints the response instead.
enum Render {
    static func text(for request: JSONValue, _ response: JSONValue) -> String {
        switch request["command"]?.stringValue {
        case "list": return list(response)
        case "stats": return stats(response)
        case "version": return response["version"]?.stringValue ?? ""
        case "config": return configurationFile(response["config"] ?? .null)
        default:
            // Commands that change something: what the server says it did.
            return response["message"]?.stringValue ?? "ok"
        }
    }

    /// The configuration as a file: pretty JSON, keys sorted (a stable order for diffs); the
    /// caller's print adds the trailing newline.
    static func configurationFile(_ configuration: JSONValue) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(configuration) else { return "null" }
        return String(decoding: data, as: UTF8.self)
    }

    private static func list(_ response: JSONValue) -> String {
        guard case .array(let controllers)? = response["controllers"] else { return "" }
        var lines: [String] = []
        for controller in controllers {
            let name = controller["name"]?.scalarText ?? "?"
            let connected = controller["connected"] == .bool(true) ? "connected" : "waiting for QEMU"
            lines.append("\(name)  \(controller["socket"]?.scalarText ?? "")  \(controller["request_queues"]?.scalarText ?? "?") queue(s), \(connected)")
            guard case .array(let luns)? = controller["luns"] else { continue }
            for lun in luns {
                let blocks = Double(lun["blocks"]?.scalarText ?? "0") ?? 0
                let blockSize = Double(lun["block_size"]?.scalarText ?? "0") ?? 0
                let mib = Int(blocks * blockSize / 1_048_576)
                lines.append("  \(lun["address"]?.scalarText ?? "?")  \(lun["state"]?.scalarText ?? "?")  \(lun["url"]?.scalarText ?? "")  \(mib) MiB  "
                             + "\(lun["vendor"]?.scalarText ?? "") \(lun["product"]?.scalarText ?? "")")
            }
        }
        return lines.joined(separator: "\n")
    }

    private static func stats(_ response: JSONValue) -> String {
        guard case .array(let controllers)? = response["controllers"] else { return "" }
        var lines: [String] = []
        func number(_ value: JSONValue?, _ key: String) -> Double { Double(value?[key]?.scalarText ?? "0") ?? 0 }
        func counters(_ c: JSONValue?) -> String {
            let requests = c?["requests"]
            let latency = c?["latency"]
            let count = number(latency, "count")
            let mean = count > 0 ? number(latency, "sum_seconds") / count * 1e6 : 0
            return "read \(Int(number(requests, "read"))), write \(Int(number(requests, "write"))), "
                + "other \(Int(number(requests, "other"))) requests; "
                + "\(Int(number(c, "bytes_read")) / 1_048_576) MiB read, \(Int(number(c, "bytes_written")) / 1_048_576) MiB written; "
                + "\(Int(number(c, "errors"))) errors; mean latency \(Int(mean)) us"
        }
        for controller in controllers {
            lines.append("\(controller["name"]?.scalarText ?? "?"): \(counters(controller["totals"]))")
            if case .array(let queues)? = controller["queues"] {
                for queue in queues {
                    lines.append("  queue \(queue["queue"]?.scalarText ?? "?"): \(counters(queue)); "
                                 + "\(Int(number(queue, "in_flight"))) in flight")
                }
            }
            if case .array(let luns)? = controller["luns"] {
                for lun in luns {
                    lines.append("  lun \(lun["target"]?.scalarText ?? "?"):\(lun["lun"]?.scalarText ?? "?"): "
                                 + "\(Int(number(lun, "reconnects"))) reconnects, \(Int(number(lun, "connection_losses"))) connections lost, "
                                 + "\(Int(number(lun, "command_failures"))) commands failed, \(Int(number(lun, "login_failures"))) logins failed")
                }
            }
        }
        return lines.joined(separator: "\n")
    }
}
