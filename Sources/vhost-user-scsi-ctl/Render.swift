import ControlProtocol

/// Human-readable output of the client; `--json` prints the response instead.
enum Render {
    static func text(for request: JSONValue, _ response: JSONValue) -> String {
        switch request["command"]?.stringValue {
        case "list": return list(response)
        case "version": return response["version"]?.stringValue ?? ""
        default:
            // Commands that change something: what the server says it did.
            return response["message"]?.stringValue ?? "ok"
        }
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
                lines.append("  \(lun["address"]?.scalarText ?? "?")  \(lun["url"]?.scalarText ?? "")  \(mib) MiB  "
                             + "\(lun["vendor"]?.scalarText ?? "") \(lun["product"]?.scalarText ?? "")")
            }
        }
        return lines.joined(separator: "\n")
    }
}
