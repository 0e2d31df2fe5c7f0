import ControlProtocol
import Glibc
import UnixSockets

/// `vhost-user-scsi-ctl`: sends one command to a server's control socket and prints the answer.
enum Client {
    static let usage = """
    Usage: vhost-user-scsi-ctl [--control-socket PATH] [--json] COMMAND [ARGUMENTS]

    Talks to a running vhost-user-scsi through the socket it was given with --control-socket
    (default: $VHOST_USER_SCSI_CONTROL_SOCKET). Protocol: Docs/CONTROL.md.

    Commands:
      list [CONTROLLER]                 controllers, whether QEMU is connected, their LUNs
      stats [CONTROLLER]                per-queue and per-LUN counters
      add-controller NAME SOCKET [--num-queues N] [--lun [T:L=]URL ...]
                                        probe the LUNs and serve a new controller at SOCKET
                                        (for a new VM; no restart): --num-queues request queues
                                        (default 4), --lun as in the configuration file
      remove-controller NAME [--force]  stop serving a controller and remove its socket;
                                        refused while a VM is connected, unless --force (the VM
                                        then loses its disks)
      add-lun CONTROLLER T:L URL        probe URL and add it as guest target T, LUN L; the guest
                                        is told through the event queue and sees a new disk
      remove-lun CONTROLLER T:L         take the LUN away (in-flight I/O is aborted); the guest
                                        is told and its disk goes away
      resize-lun CONTROLLER T:L         re-read the LUN's capacity; when it changed, the guest is
                                        told and re-reads it
      config                            the running configuration (current LUNs included) in the
                                        configuration file's format, to persist runtime changes:
                                        config > vm1.json.new && mv vm1.json.new vm1.json
      version                           the server's version

    Options:
      --json      print the server's JSON response as it is
      --help      show this text

    Exit status: 0 when the server did it, 1 when it refused (the reason on stderr), 2 on bad
    usage or when the server cannot be reached.
    """

    static func main() -> Never {
        var arguments = Array(CommandLine.arguments.dropFirst())
        var socketPath = getenv("VHOST_USER_SCSI_CONTROL_SOCKET").map { String(cString: $0) }
        var json = false
        while let first = arguments.first, first.hasPrefix("--") {
            arguments.removeFirst()
            switch first {
            case "--help": print(usage); exit(0)
            case "--json": json = true
            case "--control-socket":
                guard !arguments.isEmpty else { fail("--control-socket needs a path", status: 2) }
                socketPath = arguments.removeFirst()
            default:
                if first.hasPrefix("--control-socket=") {
                    socketPath = String(first.dropFirst("--control-socket=".count))
                } else {
                    fail("unknown option '\(first)' (see --help)", status: 2)
                }
            }
        }
        guard let socketPath, !socketPath.isEmpty else {
            fail("no control socket: give --control-socket PATH or set VHOST_USER_SCSI_CONTROL_SOCKET", status: 2)
        }
        let request: JSONValue
        do { request = try makeRequest(arguments) } catch { fail("\(error) (see --help)", status: 2) }

        let response: JSONValue
        do { response = try exchange(request, path: socketPath) } catch { fail("\(error)", status: 2) }
        if json {
            print(response.serialized())
        } else if response["ok"] == .bool(true) {
            print(Render.text(for: request, response))
        }
        guard response["ok"] == .bool(true) else {
            fail(response["error"]?.stringValue ?? "the server refused: \(response.serialized())", status: 1)
        }
        exit(0)
    }

    static func makeRequest(_ arguments: [String]) throws(JSONError) -> JSONValue {
        guard let command = arguments.first else { throw JSONError("a command is required") }
        let rest = Array(arguments.dropFirst())
        func expect(_ names: [String], optional: Int = 0) throws(JSONError) -> [String: JSONValue] {
            guard (names.count - optional...names.count).contains(rest.count) else {
                throw JSONError("\(command) takes \(names.map { $0.uppercased() }.joined(separator: " "))")
            }
            var fields: [String: JSONValue] = ["command": .string(command)]
            for (name, value) in zip(names, rest) { fields[name] = .string(value) }
            return fields
        }
        switch command {
        case "list", "stats": return .object(try expect(["controller"], optional: 1))
        case "version", "config": return .object(try expect([]))
        case "add-lun": return .object(try expect(["controller", "address", "url"]))
        case "remove-lun", "resize-lun": return .object(try expect(["controller", "address"]))
        case "add-controller": return try addController(rest)
        case "remove-controller":
            var fields: [String: JSONValue] = ["command": .string(command)]
            for argument in rest {
                if argument == "--force" {
                    fields["force"] = .bool(true)
                } else if fields["name"] == nil && !argument.hasPrefix("--") {
                    fields["name"] = .string(argument)
                } else {
                    throw JSONError("remove-controller takes NAME [--force], not '\(argument)'")
                }
            }
            guard fields["name"] != nil else { throw JSONError("remove-controller takes NAME [--force]") }
            return .object(fields)
        default: throw JSONError("unknown command '\(command)'")
        }
    }

    /// `NAME SOCKET [--num-queues N] [--lun [T:L=]URL ...]`: the server checks the values (as it
    /// checks a configuration file's), the client only the shape.
    static func addController(_ arguments: [String]) throws(JSONError) -> JSONValue {
        let shape = "add-controller takes NAME SOCKET [--num-queues N] [--lun [T:L=]URL ...]"
        var fields: [String: JSONValue] = ["command": .string("add-controller")]
        var positional: [String] = []
        var luns: [JSONValue] = []
        var rest = arguments[...]
        while let argument = rest.popFirst() {
            switch argument {
            case "--num-queues", "--lun":
                guard let value = rest.popFirst() else { throw JSONError("\(argument) needs a value") }
                if argument == "--lun" {
                    luns.append(.string(value))
                } else {
                    guard let n = Int(value) else { throw JSONError("--num-queues must be a number, not '\(value)'") }
                    fields["num_queues"] = .number(Double(n))
                }
            default:
                guard !argument.hasPrefix("--") else { throw JSONError("\(shape); unknown option '\(argument)'") }
                positional.append(argument)
            }
        }
        guard positional.count == 2 else { throw JSONError(shape) }
        fields["name"] = .string(positional[0])
        fields["socket"] = .string(positional[1])
        if !luns.isEmpty { fields["luns"] = .array(luns) }
        return .object(fields)
    }

    /// One request line out, one response line back.
    static func exchange(_ request: JSONValue, path: String) throws(JSONError) -> JSONValue {
        let fd: Int32
        do { fd = try UnixSocket.connect(path: path) } catch { throw JSONError(error.description) }
        defer { closeOwned(fd) }
        guard request.writeLine(to: fd) else {
            throw JSONError("cannot send to \(path): \(String(cString: strerror(errno)))")
        }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !received.contains(UInt8(ascii: "\n")) {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw JSONError("the server at \(path) closed the connection without an answer") }
            received += buffer[0..<n]
        }
        return try JSONValue.parse(received.prefix { $0 != UInt8(ascii: "\n") })
    }

    static func fail(_ message: String, status: Int32) -> Never {
        let line = "vhost-user-scsi-ctl: \(message)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
        exit(status)
    }
}
